"""Images on the wire: base64-encoded PNG, decoded with size limits checked from the PNG header before decompression."""

from __future__ import annotations

import base64
import binascii
import io
import struct
from typing import Sequence

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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


def png_size(raw: bytes, index: int) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, which a PNG must start with; nothing is decompressed."""
    if not raw.startswith(PNG_SIGNATURE):
        raise ImageError(422, f"images[{index}] is not a PNG (send base64-encoded PNG bytes)")
    if len(raw) < 24 or raw[8:16] != b"\x00\x00\x00\x0dIHDR":
        raise ImageError(422, f"images[{index}] is a corrupt PNG: it does not start with an IHDR chunk")
    width, height = struct.unpack(">II", raw[16:24])
    if width == 0 or height == 0:
        raise ImageError(422, f"images[{index}] is a corrupt PNG: it declares a size of {width}x{height}")
    return width, height


def check_size(width: int, height: int, index: int, max_pixels: int, max_side: int) -> None:
    """413 if an image is too large (per side or in pixels), with what to fix."""
    if max(width, height) > max_side:
        raise ImageError(413, f"images[{index}] is {width}x{height} (WxH), a side above the limit of {max_side} pixels; resize it")
    if width * height > max_pixels:
        raise ImageError(413, f"images[{index}] is {width}x{height} = {width * height} pixels, above the limit of {max_pixels}; resize it")


def decode_png(data: str, index: int, max_pixels: int, max_side: int) -> np.ndarray:
    """One base64 PNG -> uint8 HWC RGB; raises ImageError (422 undecodable/non-PNG, 413 too large)."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(422, f"images[{index}] is not valid base64") from None
    check_size(*png_size(raw, index), index, max_pixels, max_side)
    try:
        with Image.open(io.BytesIO(raw), formats=["PNG"]) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except Image.DecompressionBombError as exc:
        raise ImageError(413, f"images[{index}] is a decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        if "too large" in str(exc).lower() or "too much memory" in str(exc).lower():  # PIL's guards on compressed text chunks
            raise ImageError(413, f"images[{index}] decompresses to too much data: {exc}") from None
        raise ImageError(422, f"images[{index}] is a corrupt PNG: {exc}") from None


def decode_batch(data: Sequence[str], max_pixels: int, max_side: int) -> list[np.ndarray]:
    """Base64 PNGs -> uint8 HWC RGB arrays, in order; sizes may differ."""
    return [decode_png(d, i, max_pixels, max_side) for i, d in enumerate(data)]
