"""The run folder: its layout, lock, durable writes, checkpoints and their integrity, metrics, plots, tracking."""
