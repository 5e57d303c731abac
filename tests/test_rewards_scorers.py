"""Scorers: JPEG exact vs PIL, the real LAION head vs a numpy hand computation, AestheticModel, composite."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from rewards_service.registry import build_scorer
from rewards_service.scorers.aesthetic import HEAD_SHA256, AestheticModel, default_head_path, load_aesthetic_head
from rewards_service.scorers.base import ScoreResult
from rewards_service.scorers.clip_common import clip_preprocess
from rewards_service.scorers.composite import CompositeScorer
from rewards_service.scorers.jpeg import JpegCompressibility


def _images(n: int = 2, size: int = 32) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_jpeg_exact_vs_pil():
    images = _images(3)
    sizes = []
    for im in images:
        buffer = io.BytesIO()
        Image.fromarray(im).save(buffer, format="JPEG", quality=95)
        sizes.append(len(buffer.getvalue()) / 1000)
    assert build_scorer("jpeg_compressibility").score(images, ["a"] * 3).rewards == [-s for s in sizes]
    assert build_scorer("jpeg_incompressibility").score(images, ["a"] * 3).rewards == sizes


def test_build_scorer_version_override_and_errors():
    assert build_scorer("jpeg_compressibility", version="9").version == "9"
    assert build_scorer("rewards_service.scorers.jpeg:JpegIncompressibility").name == "jpeg_incompressibility"
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        build_scorer("nope")
    with pytest.raises(ValueError, match="cannot import scorer"):
        build_scorer("no.such.module:X")


def test_score_result_valid_defaults_and_failed():
    assert ScoreResult([1.0, 2.0], "1").valid == [True, True]
    failed = ScoreResult.failed(2, "1", "timeout")
    assert failed.valid == [False, False] and failed.num_invalid == 2 and all(np.isnan(failed.rewards))
    with pytest.raises(ValueError, match="valid has 1 entries"):
        ScoreResult([1.0, 2.0], "1", valid=[True])


def test_shipped_head_is_the_laion_file():
    import hashlib

    assert hashlib.sha256(default_head_path().read_bytes()).hexdigest() == HEAD_SHA256


def test_head_rejects_wrong_checksum(tmp_path):
    bad = tmp_path / "head.pth"
    bad.write_bytes(default_head_path().read_bytes() + b"x")
    with pytest.raises(ValueError, match="sha256"):
        load_aesthetic_head(bad)


def head_by_hand(embeds: np.ndarray) -> np.ndarray:
    """The LAION head on [B, 768] embeddings in float64 numpy, from the shipped file's weights: five affine maps, no
    activations."""
    state = torch.load(default_head_path(), map_location="cpu", weights_only=True)
    w = {k: v.double().numpy() for k, v in state.items()}
    x = np.asarray(embeds, dtype=np.float64)
    for i in (0, 2, 4, 6, 7):
        x = x @ w[f"layers.{i}.weight"].T + w[f"layers.{i}.bias"]
    return x[:, 0]


def normalized_clip_embeds(clip, pixels: torch.Tensor) -> np.ndarray:
    """CLIP image embeddings of preprocessed [0, 1] pixels, L2-normalized by hand (float64 numpy)."""
    with torch.no_grad():
        embeds = clip(pixel_values=clip_preprocess(pixels, clip.config.image_size)).image_embeds.double().numpy()
    return embeds / np.linalg.norm(embeds, axis=1, keepdims=True)


def test_real_head_matches_numpy_hand_computation():
    embeds = np.random.default_rng(0).standard_normal((4, 768))
    embeds /= np.linalg.norm(embeds, axis=1, keepdims=True)
    head = load_aesthetic_head()
    got = head(torch.from_numpy(embeds).float()).squeeze(-1).detach().double().numpy()
    np.testing.assert_allclose(got, head_by_hand(embeds), rtol=1e-5, atol=1e-5)
    assert head.layers[0].weight.dtype == torch.float32


def tiny_clip():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=768,
    )
    return CLIPVisionModelWithProjection(config).eval()


def test_aesthetic_model_chain_and_gradients():
    clip = tiny_clip()
    model = AestheticModel(clip, load_aesthetic_head())
    images = torch.rand(2, 3, 48, 40, requires_grad=True)
    scores = model(images)
    assert scores.shape == (2,)
    expected = head_by_hand(normalized_clip_embeds(clip, images.detach()))  # preprocess → CLIP → L2 → head, by hand
    np.testing.assert_allclose(scores.detach().double().numpy(), expected, rtol=1e-5, atol=1e-5)
    scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_aesthetic_rejects_head_mismatch():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    clip = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            projection_dim=16,
        )
    )
    with pytest.raises(ValueError, match="projection_dim 16"):
        AestheticModel(clip, load_aesthetic_head())


def test_aesthetic_scorer_from_local_dir(tmp_path):
    from transformers import CLIPVisionModelWithProjection

    tiny_clip().save_pretrained(tmp_path / "clip")
    scorer = build_scorer("aesthetic", clip_model=str(tmp_path / "clip"), device="cpu", version="tiny")
    images = _images(2, 40)
    result = scorer.score(images, ["a", "b"])
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    clip = CLIPVisionModelWithProjection.from_pretrained(
        tmp_path / "clip"
    ).eval()  # loaded here, not through the scorer
    assert result.version == "tiny" and result.valid == [True, True]
    np.testing.assert_allclose(result.rewards, head_by_hand(normalized_clip_embeds(clip, pixels)), rtol=1e-5, atol=1e-5)


class Constant:
    def __init__(self, name: str, value: float, valid: bool = True) -> None:
        self.name, self.version, self.value, self.ok = name, "3", value, valid

    def score(self, images, prompts) -> ScoreResult:
        n = len(prompts)
        return ScoreResult(
            [self.value if self.ok else float("nan")] * n, self.version, {"tag": [self.name] * n}, [self.ok] * n
        )


def test_composite_weighted_sum_and_parts():
    images = _images(2)
    jpeg = JpegCompressibility()
    composite = CompositeScorer(
        {"c": Constant("c", 2.0), "jpeg_compressibility": jpeg}, {"c": 1.0, "jpeg_compressibility": 0.1}
    )
    result = composite.score(images, ["a", "b"])
    sizes = jpeg.score(images, ["a", "b"]).rewards
    assert result.rewards == pytest.approx([2.0 + 0.1 * s for s in sizes])
    assert result.details["part:c"] == [2.0, 2.0] and result.details["part:jpeg_compressibility"] == sizes
    assert result.details["c:tag"] == ["c", "c"]
    assert result.version == "1*c@3+0.1*jpeg_compressibility@1"


def test_composite_invalid_part_invalidates_sample():
    composite = CompositeScorer({"a": Constant("a", 1.0), "b": Constant("b", 1.0, valid=False)}, {"a": 1.0, "b": 1.0})
    result = composite.score(_images(2), ["x", "y"])
    assert result.valid == [False, False]


def test_composite_from_registry_and_errors():
    composite = build_scorer("composite", weights={"jpeg_compressibility": 1.0, "jpeg_incompressibility": 0.5})
    size_kb = -JpegCompressibility().score(_images(1), ["a"]).rewards[0]
    assert composite.score(_images(1), ["a"]).rewards[0] == pytest.approx(-size_kb + 0.5 * size_kb)
    with pytest.raises(ValueError, match="without a scorer"):
        CompositeScorer({}, {"x": 1.0})


def test_score_merged_groups_by_size_and_splits_in_order():
    from rewards_service.batching import score_merged

    calls = []

    class Recording(Constant):
        def score(self, images, prompts):
            calls.append(images.shape)
            return ScoreResult([float(im.mean()) for im in images], "1", {"p": list(prompts)})

    requests = [(_images(1, 8), ["a"]), (_images(2, 16), ["b", "c"]), (_images(3, 8), ["d", "e", "f"])]
    results = score_merged(Recording("r", 0.0), requests)
    assert sorted(calls) == [(2, 16, 16, 3), (4, 8, 8, 3)]
    for (images, prompts), result in zip(requests, results):
        assert result.details["p"] == prompts and result.rewards == [float(im.mean()) for im in images]
