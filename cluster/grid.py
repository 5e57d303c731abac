"""Sample grids: images with their prompt and reward written under each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def save_sample_grid(path: Path, images: np.ndarray, prompts: list[str], rewards: list[float], columns: int = 4, cell: int = 128) -> np.ndarray:
    """`images` uint8 [N, H, W, 3]; writes a PNG grid with captions and returns it (uint8 HWC)."""
    font = ImageFont.load_default()
    caption_height = 24
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * cell, rows * (cell + caption_height)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (image, prompt, reward) in enumerate(zip(images, prompts, rewards)):
        x, y = (i % columns) * cell, (i // columns) * (cell + caption_height)
        grid.paste(Image.fromarray(image).resize((cell, cell), Image.NEAREST), (x, y))
        draw.text((x + 2, y + cell + 1), prompt[:22], fill="black", font=font)
        draw.text((x + 2, y + cell + 12), f"r={reward:.3f}", fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return np.asarray(grid)
