"""Images on the wire: base64-encoded PNG. Sizes are read from each PNG header before anything is decompressed,
and images are decoded lazily, one size group at a time, straight into the batch array the scorer gets."""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_BASE64_PREFIX = "iVBORw0KGgo"  # base64 of the signature's first 8 bytes
PNG_BASE64_PATTERN = rf"^{PNG_BASE64_PREFIX}[A-Za-z0-9+/]*={{0,2}}$"
"""What a base64 PNG looks like: the signature's base64 prefix, then base64 characters (JSON Schema `pattern`)."""
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")  # used with fullmatch: `$` would let a final newline through
HEADER_CHARS = 32
"""base64 characters that hold the signature and the IHDR chunk's width and height (24 bytes)."""


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
        raise ImageError(
            413, f"images[{index}] is {width}x{height} (WxH), a side above the limit of {max_side} pixels; resize it"
        )
    if width * height > max_pixels:
        raise ImageError(
            413,
            f"images[{index}] is {width}x{height} = {width * height} pixels, above the limit of {max_pixels}; resize "
            "it",
        )


class ImageHeader(NamedTuple):
    """One image of a request, known from its header only: where it is, and its size."""

    index: int
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def check_png_base64(data: str, index: int) -> None:
    """ImageError (422) unless `data` is base64 text starting with the PNG signature (what the request schema says)."""
    if not data:
        raise ImageError(422, f"images[{index}] is empty; send base64-encoded PNG bytes")
    if _BASE64.fullmatch(data) is None:
        raise ImageError(422, f"images[{index}] is not valid base64 (standard alphabet A-Z a-z 0-9 + /, = padding)")
    if not data.startswith(PNG_BASE64_PREFIX):
        raise ImageError(
            422, f"images[{index}] is not a PNG (send base64-encoded PNG bytes; they start with iVBORw0KGgo)"
        )


def read_header(data: str, index: int, max_pixels: int, max_side: int) -> ImageHeader:
    """The size of one base64 PNG from its first 32 characters; 422 if it is not a PNG, 413 if too large."""
    try:
        head = base64.b64decode(data[:HEADER_CHARS], validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(422, f"images[{index}] is not valid base64") from None
    width, height = png_size(head, index)
    check_size(width, height, index, max_pixels, max_side)
    return ImageHeader(index, width, height)


def read_headers(data: Sequence[str], max_pixels: int, max_side: int) -> list[ImageHeader]:
    """The headers of every image of a request, in order (nothing is decompressed)."""
    return [read_header(d, i, max_pixels, max_side) for i, d in enumerate(data)]


def _decode_into(out: np.ndarray, data: str, index: int) -> None:
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(422, f"images[{index}] is not valid base64") from None
    try:
        with Image.open(io.BytesIO(raw), formats=["PNG"]) as img:
            if img.size != (out.shape[1], out.shape[0]):
                raise ImageError(
                    422,
                    f"images[{index}] is a corrupt PNG: it declares {out.shape[1]}x{out.shape[0]} but decodes to "
                    f"{img.size[0]}x{img.size[1]}",
                )
            out[...] = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except Image.DecompressionBombError as exc:
        raise ImageError(413, f"images[{index}] is a decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageError):
            raise
        if (
            "too large" in str(exc).lower() or "too much memory" in str(exc).lower()
        ):  # PIL's guards on compressed text chunks
            raise ImageError(413, f"images[{index}] decompresses to too much data: {exc}") from None
        raise ImageError(422, f"images[{index}] is a corrupt PNG: {exc}") from None


def decode_group(data: Sequence[str], headers: Sequence[ImageHeader]) -> np.ndarray:
    """Images of one size -> uint8 [N, H, W, 3], each decoded straight into its slot (no list, no stack copy)."""
    height, width = headers[0].height, headers[0].width
    batch = np.empty((len(headers), height, width, 3), dtype=np.uint8)
    for slot, header in zip(batch, headers):
        _decode_into(slot, data[header.index], header.index)
    return batch


def size_groups(headers: Sequence[ImageHeader]) -> list[list[ImageHeader]]:
    """Headers grouped by (height, width), groups in order of first appearance."""
    groups: dict[tuple[int, int], list[ImageHeader]] = {}
    for header in headers:
        groups.setdefault((header.height, header.width), []).append(header)
    return list(groups.values())
