"""Configuration: the pydantic schema, loading with --set overrides, the shipped presets and prompt sets."""
