"""The one epoch numbering of a run: from 0, in the console, metrics.jsonl, checkpoints/epoch-NNNN,
samples/epoch-NNNN.png and the `faults.*_epochs` settings alike (as PyTorch Lightning counts)."""


def epoch_label(epoch: int, total: int) -> str:
    """ "epoch 4/19": epoch `epoch` of a run whose last epoch is `total` − 1 (`run.epochs` = `total`)."""
    return f"epoch {epoch}/{total - 1}"
