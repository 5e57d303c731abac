"""Pure reward scorers, one module each: uint8 images [B, H, W, 3] and prompts in, floats out.

The registry of reward names is `rewards_service.registry`; this package imports nothing.
"""
