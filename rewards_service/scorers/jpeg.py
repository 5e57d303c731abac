"""JPEG (in)compressibility: the file size of the image saved by PIL at quality 95, in kB (bytes / 1000)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from rewards_service.scorers.base import ScoreResult, check_batch

JPEG_MAX_SIDE = 65500  # libjpeg cannot encode a wider or taller image


def jpeg_size_kb(image: np.ndarray, quality: int = 95) -> float:
    """Size in kB (bytes / 1000) of one uint8 HWC RGB image encoded as JPEG by PIL."""
    if max(image.shape[:2]) > JPEG_MAX_SIDE:
        height, width = image.shape[:2]
        raise ValueError(
            f"a {width}x{height} (WxH) image has a side above {JPEG_MAX_SIDE} pixels, which JPEG cannot encode; "
            "resize it"
        )
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.tell() / 1000.0


class JpegCompressibility:
    """Reward = −JPEG size in kB: smaller files score higher."""

    name = "jpeg_compressibility"
    version = "1"
    sign = -1.0

    def score(self, images: np.ndarray, prompts: Sequence[str]) -> ScoreResult:
        check_batch(images, prompts)
        return ScoreResult(rewards=[self.sign * jpeg_size_kb(im) for im in images], version=self.version)


class JpegIncompressibility(JpegCompressibility):
    """Reward = +JPEG size in kB: larger files score higher."""

    name = "jpeg_incompressibility"
    sign = 1.0
