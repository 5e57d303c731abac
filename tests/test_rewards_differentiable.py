"""Differentiable rewards (CLIP score, PickScore, HPSv2) on tiny random models saved to disk and loaded by folder.

Each score is checked against an independent computation (the library's own preprocessing and feature
functions, cosine by hand), gradients reach the pixels, and the served scorer matches the module.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from rewards_service.differentiable import DifferentiableScorer
from rewards_service.registry import build_differentiable_reward, build_scorer, differentiable_reward_names

PROMPTS = ["a cat on a mat", "two dogs"]


def char_level_tokenizer():
    """A CLIP tokenizer with a byte-level vocab and no merges: buildable offline."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    return CLIPTokenizer(vocab={tok: i for i, tok in enumerate(tokens)}, merges=[], model_max_length=77)


def save_tiny_clip(folder, seed: int = 0, logit_scale: float = 2.6592, with_processor: bool = True) -> None:
    """A random 2-layer CLIPModel (32 px, patch 8) and its CLIPProcessor, saved with save_pretrained."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = char_level_tokenizer()
    tower = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(
        text_config=dict(
            tower,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(tower, image_size=32, patch_size=8),
        projection_dim=16,
        logit_scale_init_value=logit_scale,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    if not with_processor:
        return
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_clip")
    save_tiny_clip(folder)
    return str(folder)


@pytest.fixture(scope="module")
def clip_score(clip_dir):
    return build_differentiable_reward("clip_score", model=clip_dir)


def features(output) -> torch.Tensor:
    """get_*_features returns a tensor (transformers 4) or an output whose pooler_output is the projection (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def reference_cosine(
    folder: str, images_uint8: np.ndarray, prompts: list[str], processor_folder: str | None = None
) -> torch.Tensor:
    """cos(image, text) the transformers way: CLIPProcessor on PIL images, get_*_features, normalized by hand."""
    from transformers import AutoProcessor, CLIPModel

    model, processor = (
        CLIPModel.from_pretrained(folder).eval(),
        AutoProcessor.from_pretrained(processor_folder or folder),
    )
    pixels = processor(images=[Image.fromarray(im) for im in images_uint8], return_tensors="pt").pixel_values
    text = processor.tokenizer(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        image = features(model.get_image_features(pixel_values=pixels))
        caption = features(model.get_text_features(input_ids=text.input_ids, attention_mask=text.attention_mask))
    image, caption = image / image.norm(dim=-1, keepdim=True), caption / caption.norm(dim=-1, keepdim=True)
    return (image * caption).sum(-1)


def uint8_images(n: int = 2, height: int = 32, width: int = 32, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, 3), dtype=np.uint8)


def to_float01(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def assert_pixel_gradients(model: torch.nn.Module, height: int = 48, width: int = 40) -> None:
    images = torch.rand(2, 3, height, width, requires_grad=True)
    model(images, PROMPTS).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_clip_score_matches_transformers_processor_path(clip_dir, clip_score):
    model = clip_score
    images = uint8_images()
    scores = model(to_float01(images), PROMPTS)
    torch.testing.assert_close(
        scores, reference_cosine(clip_dir, images, PROMPTS), atol=1e-6, rtol=1e-5
    )  # the raw cosine
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    percent = build_differentiable_reward("clip_score", model=clip_dir, scale=100)(to_float01(images), PROMPTS)
    torch.testing.assert_close(percent, 100 * scores, atol=1e-4, rtol=1e-5)


def test_clip_score_resizes_like_the_processor(clip_dir, clip_score):
    images = uint8_images(height=64, width=80)
    scores = clip_score(to_float01(images), PROMPTS)
    # torch antialiased bicubic vs PIL bicubic with uint8 rounding: close, not bit-equal
    torch.testing.assert_close(scores, reference_cosine(clip_dir, images, PROMPTS), atol=3e-3, rtol=0)


def test_clip_score_gradients_reach_pixels(clip_score):
    assert_pixel_gradients(clip_score)


def test_clip_score_served_matches_module(clip_dir, clip_score):
    scorer = build_scorer("clip_score", model=clip_dir, device="cpu", version="tiny")
    assert isinstance(scorer, DifferentiableScorer)
    images = uint8_images(height=40, width=48)
    result = scorer.score(images, PROMPTS)
    expected = clip_score(to_float01(images), PROMPTS)
    assert result.version == "tiny" and result.valid == [True, True]
    np.testing.assert_allclose(result.rewards, expected.tolist(), rtol=1e-6, atol=1e-6)


def test_clip_score_needs_one_prompt_per_image(clip_score):
    with pytest.raises(ValueError, match="one prompt per image"):
        clip_score(torch.rand(2, 3, 32, 32), ["only one"])


def test_missing_model_folder_says_where_to_put_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such local folder.*Hugging Face cache.*model="):
        build_differentiable_reward("clip_score", model=str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache.*model="):
        build_differentiable_reward("clip_score", model="no-such-org/no-such-clip")
    with pytest.raises(FileNotFoundError, match="does not hold loadable weights.*model="):
        build_differentiable_reward("clip_score", model=str(tmp_path))


def test_non_differentiable_reward_lists_the_differentiable_ones():
    with pytest.raises(ValueError, match="not differentiable.*clip_score") as info:
        build_differentiable_reward("jpeg_compressibility")
    for name in differentiable_reward_names():
        assert repr(name) in str(info.value)


@pytest.fixture(scope="module")
def pickscore_dir(tmp_path_factory):
    """A PickScore-like checkpoint: model weights only (logit scale ln 50), the processor comes from another folder."""
    folder = tmp_path_factory.mktemp("tiny_pickscore")
    save_tiny_clip(folder, seed=1, logit_scale=float(np.log(50.0)), with_processor=False)
    return str(folder)


def test_pickscore_is_temperature_times_cosine(pickscore_dir, clip_dir):
    model = build_differentiable_reward("pickscore", model=pickscore_dir, processor=clip_dir)
    images = uint8_images(seed=2)
    scores = model(to_float01(images), PROMPTS)
    expected = 50.0 * reference_cosine(pickscore_dir, images, PROMPTS, processor_folder=clip_dir)
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-5)
    assert_pixel_gradients(model)


def test_pickscore_served_matches_module(pickscore_dir, clip_dir):
    scorer = build_scorer("pickscore", model=pickscore_dir, processor=clip_dir, device="cpu")
    images = uint8_images(height=48, width=36, seed=3)
    expected = build_differentiable_reward("pickscore", model=pickscore_dir, processor=clip_dir)(
        to_float01(images), PROMPTS
    )
    np.testing.assert_allclose(scorer.score(images, PROMPTS).rewards, expected.tolist(), rtol=1e-6, atol=1e-6)


def test_pickscore_missing_processor_names_the_option(pickscore_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="processor=/path/to/folder"):
        build_differentiable_reward("pickscore", model=pickscore_dir, processor=str(tmp_path / "no_processor"))


def test_processor_the_differentiable_preprocessing_cannot_reproduce_is_refused(pickscore_dir, tmp_path):
    from transformers import CLIPImageProcessor, CLIPProcessor

    image_processor = CLIPImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=char_level_tokenizer()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="is not CLIP's"):
        build_differentiable_reward("pickscore", model=pickscore_dir, processor=str(tmp_path))


TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 8, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}


@pytest.fixture(scope="module")
def hpsv2_files(tmp_path_factory):
    """A tiny open_clip config (registered by file) and a random HPSv2-style checkpoint {'state_dict': ...}."""
    import json

    open_clip = pytest.importorskip("open_clip")
    folder = tmp_path_factory.mktemp("tiny_hpsv2")
    config = folder / "tiny-hps-vit.json"
    config.write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-hps-vit", pretrained=None)
    torch.save({"state_dict": model.state_dict()}, folder / "HPS_tiny.pt")
    return str(config), str(folder / "HPS_tiny.pt")


def test_hpsv2_matches_open_clip_preprocessing_and_scoring(hpsv2_files):
    import open_clip

    config, checkpoint = hpsv2_files
    model = build_differentiable_reward("hpsv2", architecture=config, checkpoint=checkpoint)
    reference, _, preprocess_val = open_clip.create_model_and_transforms("tiny-hps-vit", pretrained=None)
    reference.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    images = uint8_images(seed=4)
    with torch.no_grad():
        # HPSv2's scoring: preprocess_val on PIL, model(image, text) -> normalized features, diagonal of image @ text.T
        out = reference.eval()(
            torch.stack([preprocess_val(Image.fromarray(im)) for im in images]),
            open_clip.get_tokenizer("tiny-hps-vit")(PROMPTS),
        )
        image_features, text_features = (
            (out["image_features"], out["text_features"]) if isinstance(out, dict) else out[:2]
        )
    torch.testing.assert_close(
        model(to_float01(images), PROMPTS), torch.diagonal(image_features @ text_features.T), atol=1e-5, rtol=1e-5
    )
    assert_pixel_gradients(model)


def test_hpsv2_served_matches_module(hpsv2_files):
    config, checkpoint = hpsv2_files
    scorer = build_scorer("hpsv2", architecture=config, checkpoint=checkpoint, device="cpu")
    images = uint8_images(height=40, width=56, seed=5)
    expected = build_differentiable_reward("hpsv2", architecture=config, checkpoint=checkpoint)(
        to_float01(images), PROMPTS
    )
    np.testing.assert_allclose(scorer.score(images, PROMPTS).rewards, expected.tolist(), rtol=1e-6, atol=1e-6)


def test_hpsv2_missing_checkpoint_says_where_to_put_it(hpsv2_files, tmp_path):
    with pytest.raises(FileNotFoundError, match="Hugging Face cache.*checkpoint="):
        build_differentiable_reward("hpsv2", architecture=hpsv2_files[0], checkpoint=str(tmp_path / "missing.pt"))


def test_hpsv2_without_open_clip_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # makes `import open_clip` raise ImportError
    with pytest.raises(ImportError, match=r'pip install "rlcm\[hpsv2\]"'):
        build_differentiable_reward("hpsv2")
