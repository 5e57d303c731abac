"""JPEG rewards equal PIL's encoded size / 1000 at quality 95 (independent encode in the test)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from rewards_service.scorers.jpeg import JpegCompressibility, JpegIncompressibility, jpeg_size_kb


def pil_size_kb(image: np.ndarray) -> float:
    """Independent reference: encode with PIL at quality 95 into a fresh buffer, bytes / 1000."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=95)
    return len(buf.getvalue()) / 1000.0


def batch(kind: str, n: int = 3, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    if kind == "random":
        return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    if kind == "flat":
        return np.stack([np.full((size, size, 3), v, dtype=np.uint8) for v in np.linspace(0, 255, n).astype(np.uint8)])
    if kind == "gradient":
        ramp = np.linspace(0, 255, size, dtype=np.float64)
        img = np.stack(
            [np.add.outer(ramp, ramp) / 2, np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size))], axis=-1
        )
        return np.stack([img.astype(np.uint8)] * n)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["random", "flat", "gradient"])
def test_compressibility_is_minus_pil_size(kind):
    images = batch(kind)
    prompts = ["p"] * len(images)
    result = JpegCompressibility().score(images, prompts)
    expected = [-pil_size_kb(im) for im in images]
    assert result.rewards == pytest.approx(expected, abs=0)  # exact: bytes / 1000
    assert all(result.valid) and len(result.rewards) == len(images)
    assert isinstance(result.version, str)


@pytest.mark.parametrize("kind", ["random", "flat"])
def test_incompressibility_is_the_negation(kind):
    images = batch(kind)
    prompts = ["p"] * len(images)
    plus = JpegIncompressibility().score(images, prompts).rewards
    minus = JpegCompressibility().score(images, prompts).rewards
    assert plus == [-m for m in minus]
    assert plus == pytest.approx([pil_size_kb(im) for im in images], abs=0)


def test_noise_is_much_larger_than_flat():
    noisy, flat = pil_size_kb(batch("random")[0]), pil_size_kb(batch("flat")[0])
    assert noisy > 5 * flat
    assert jpeg_size_kb(batch("random")[0]) == noisy and jpeg_size_kb(batch("flat")[0]) == flat


def test_quality_95_not_default():
    """PIL's default quality (75) gives a smaller file for noise; the reward must use 95."""
    img = batch("random")[0]
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG")
    assert jpeg_size_kb(img) != len(buf.getvalue()) / 1000.0
    assert JpegIncompressibility().score(img[None], ["p"]).rewards[0] == pil_size_kb(img)


def test_names():
    assert JpegCompressibility.name == "jpeg_compressibility"
    assert JpegIncompressibility.name == "jpeg_incompressibility"


@pytest.mark.parametrize(
    "images",
    [
        np.zeros((2, 3, 32, 32), dtype=np.uint8),  # CHW instead of HWC
        np.zeros((32, 32, 3), dtype=np.uint8),  # no batch dim
        np.zeros((2, 32, 32, 4), dtype=np.uint8),  # RGBA
        np.zeros((2, 32, 32, 3), dtype=np.float32),  # float
        np.zeros((2, 32, 32, 3), dtype=np.int64),  # wrong int type
        [[0]],  # not an array
    ],
    ids=["chw", "no-batch", "rgba", "float", "int64", "list"],
)
@pytest.mark.parametrize("scorer", [JpegCompressibility(), JpegIncompressibility()], ids=["comp", "incomp"])
def test_bad_shapes_and_dtypes_raise_value_error(scorer, images):
    n = len(images) if hasattr(images, "__len__") else 1
    with pytest.raises(ValueError):
        scorer.score(images, ["p"] * n)


def test_prompt_count_mismatch_raises():
    with pytest.raises(ValueError, match="prompts"):
        JpegCompressibility().score(batch("flat", n=2), ["only one"])
