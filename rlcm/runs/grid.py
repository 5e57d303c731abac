"""Sample grids: a title line (epoch, reward), then images with their prompt and reward written under each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from rlcm.runs.epochs import epoch_label

TITLE_HEIGHT = 16


def save_sample_grid(
    path: Path,
    images: np.ndarray,
    prompts: list[str],
    rewards: list[float],
    columns: int = 4,
    cell: int = 128,
    title: str = "",
) -> np.ndarray:
    """`images` uint8 [N, H, W, 3]; writes a PNG grid with a title and captions and returns it (uint8 HWC)."""
    font = ImageFont.load_default()
    caption_height = 24
    top = TITLE_HEIGHT if title else 0
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * cell, top + rows * (cell + caption_height)), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((2, 2), title, fill="black", font=font)
    for i, (image, prompt, reward) in enumerate(zip(images, prompts, rewards)):
        x, y = (i % columns) * cell, top + (i // columns) * (cell + caption_height)
        grid.paste(Image.fromarray(image).resize((cell, cell), Image.NEAREST), (x, y))
        draw.text((x + 2, y + cell + 1), prompt[:22], fill="black", font=font)
        draw.text((x + 2, y + cell + 12), f"r={reward:.3f}", fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return np.asarray(grid)


def grid_title(epoch: int, epochs: int, reward: str, rewards: list[float], what: str = "") -> str:
    """ "epoch 4/19 · jpeg_compressibility · mean −1.623 over 4 shown" (`rlcm.runs.epochs` numbering)."""
    finite = [r for r in rewards if r == r]
    mean = f"mean {np.mean(finite):.3f} over {len(finite)} shown" if finite else "no valid reward"
    return f"{epoch_label(epoch, epochs)} · {what + ' ' if what else ''}{reward} · {mean}"
