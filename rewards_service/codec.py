"""Images on the wire: base64-encoded PNG, decoded with limits checked before decompression."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Sequence

import numpy as np
from PIL import Image


class ImageError(ValueError):
    """A client mistake in the images of a request; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def encode_png(image: np.ndarray) -> str:
    """Base64 PNG of one uint8 HWC RGB image."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def encode_batch(images: np.ndarray) -> list[str]:
    """Base64 PNGs of a uint8 [B, H, W, 3] batch."""
    return [encode_png(im) for im in images]


def decode_png(data: str, index: int, max_pixels: int) -> np.ndarray:
    """One base64 PNG -> uint8 HWC RGB; raises ImageError (422 undecodable/non-PNG, 413 too large)."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(422, f"images[{index}] is not valid base64") from None
    if not raw.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ImageError(422, f"images[{index}] is not a PNG (send base64-encoded PNG bytes)")
    try:
        with Image.open(io.BytesIO(raw), formats=["PNG"]) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(413, f"images[{index}] is {width}x{height} = {width * height} pixels, above the limit of {max_pixels}")
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(422, f"images[{index}] is a corrupt PNG: {exc}") from None


def decode_batch(data: Sequence[str], max_pixels: int) -> np.ndarray:
    """Base64 PNGs of one size -> uint8 [B, H, W, 3]."""
    images = [decode_png(d, i, max_pixels) for i, d in enumerate(data)]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ImageError(422, f"all images of a request must have the same size, got {sorted(s[:2] for s in shapes)} (HxW)")
    return np.stack(images)
