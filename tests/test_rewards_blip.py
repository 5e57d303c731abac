"""BLIP score and ImageReward on tiny random models of the same architectures (transformers BLIP), and the
published checkpoints' key layouts loading strictly into the modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rewards_service.registry import build_differentiable_reward, build_scorer
from rewards_service.scorers.image_reward import (
    SCORE_MEAN,
    SCORE_STD,
    TEXT_CONFIG,
    VISION_CONFIG,
    ImageRewardModel,
    convert_checkpoint,
)

PROMPTS = ["a cat on a mat", "two dogs"]
WORDS = ["a", "cat", "on", "mat", "two", "dogs", "dog", "the"]
TINY_VISION = dict(
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
    layer_norm_eps=1e-6,
)


def save_bert_tokenizer(folder) -> None:
    """A BERT WordPiece tokenizer over a handful of words plus BLIP's [DEC]/[ENC]: buildable offline."""
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(str(folder / "vocab.txt")).save_pretrained(folder)  # positional: vocab_file (4.x) or vocab (5.x)


def tiny_text_config(vocab_size: int) -> dict:
    return dict(
        vocab_size=vocab_size,
        hidden_size=32,
        encoder_hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def images_uint8(n: int = 2, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def to_float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    """A random BlipForImageTextRetrieval (32 px) with its BlipProcessor, saved with save_pretrained."""
    from transformers import AutoTokenizer, BlipConfig, BlipForImageTextRetrieval, BlipImageProcessor, BlipProcessor

    folder = tmp_path_factory.mktemp("tiny_blip")
    save_bert_tokenizer(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = BlipConfig(
        text_config=tiny_text_config(len(tokenizer)), vision_config=TINY_VISION, image_text_hidden_size=16
    )
    torch.manual_seed(0)
    BlipForImageTextRetrieval(config).save_pretrained(folder)
    BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer
    ).save_pretrained(folder)
    return folder


def reference_blip(folder, images: np.ndarray, use_itm_head: bool) -> torch.Tensor:
    """transformers' own BlipForImageTextRetrieval.forward on its processor's output, pair by pair."""
    from transformers import AutoProcessor, BlipForImageTextRetrieval

    model, processor = BlipForImageTextRetrieval.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)
    scores = []
    for image, prompt in zip(images, PROMPTS):
        inputs = processor(images=Image.fromarray(image), text=prompt, return_tensors="pt")
        with torch.no_grad():
            out = model(
                input_ids=inputs.input_ids,
                attention_mask=inputs.attention_mask,
                pixel_values=inputs.pixel_values,
                use_itm_head=use_itm_head,
            )
        scores.append(out.itm_score.softmax(dim=-1)[0, 1] if use_itm_head else out.itm_score[0, 0])
    return torch.stack(scores)


@pytest.mark.parametrize("head", ["itc", "itm"])
def test_blip_score_matches_transformers_and_has_pixel_gradients(blip_dir, head):
    images = images_uint8()
    module = build_differentiable_reward("blip_score", model=str(blip_dir), head=head)
    pixels = to_float(images).requires_grad_(True)
    scores = module(pixels, PROMPTS)
    torch.testing.assert_close(scores.detach(), reference_blip(blip_dir, images, head == "itm"), atol=2e-5, rtol=1e-4)
    scores.sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    served = build_scorer("blip_score", model=str(blip_dir), head=head, device="cpu").score(images, PROMPTS)
    np.testing.assert_allclose(served.rewards, scores.detach().numpy(), atol=1e-5)


def test_blip_score_errors(blip_dir, tmp_path):
    with pytest.raises(ValueError, match="head must be 'itc'"):
        build_differentiable_reward("blip_score", model=str(blip_dir), head="cosine")
    with pytest.raises(FileNotFoundError, match="there is no such local folder"):
        build_differentiable_reward("blip_score", model=str(tmp_path / "missing"))
    module = build_differentiable_reward("blip_score", model=str(blip_dir))
    with pytest.raises(ValueError, match="one prompt per image"):
        module(to_float(images_uint8()), PROMPTS[:1])


# ---- ImageReward ---------------------------------------------------------------------------------------------


def original_layout(vision: dict, text: dict, embed_dim: int = 256) -> dict[str, tuple[int, ...]]:
    """ImageReward.pt's keys and shapes, written out from THUDM/ImageReward's code: BLIP_Pretrain (BLIP ViT
    `visual_encoder`, med.py BertModel `text_encoder` without pooler, `vision_proj`/`text_proj`) and the MLP."""
    d, mlp, patch, n = (
        vision["hidden_size"],
        vision["intermediate_size"],
        vision["patch_size"],
        (vision["image_size"] // vision["patch_size"]) ** 2,
    )
    keys: dict[str, tuple[int, ...]] = {
        "blip.visual_encoder.cls_token": (1, 1, d),
        "blip.visual_encoder.pos_embed": (1, n + 1, d),
        "blip.visual_encoder.patch_embed.proj.weight": (d, 3, patch, patch),
        "blip.visual_encoder.patch_embed.proj.bias": (d,),
        "blip.visual_encoder.norm.weight": (d,),
        "blip.visual_encoder.norm.bias": (d,),
    }
    for i in range(vision["num_hidden_layers"]):
        b = f"blip.visual_encoder.blocks.{i}"
        keys.update(
            {
                f"{b}.norm1.weight": (d,),
                f"{b}.norm1.bias": (d,),
                f"{b}.attn.qkv.weight": (3 * d, d),
                f"{b}.attn.qkv.bias": (3 * d,),
                f"{b}.attn.proj.weight": (d, d),
                f"{b}.attn.proj.bias": (d,),
                f"{b}.norm2.weight": (d,),
                f"{b}.norm2.bias": (d,),
                f"{b}.mlp.fc1.weight": (mlp, d),
                f"{b}.mlp.fc1.bias": (mlp,),
                f"{b}.mlp.fc2.weight": (d, mlp),
                f"{b}.mlp.fc2.bias": (d,),
            }
        )
    h, inter, v, p = text["hidden_size"], text["intermediate_size"], text["vocab_size"], text["max_position_embeddings"]
    t = "blip.text_encoder"
    keys.update(
        {
            f"{t}.embeddings.word_embeddings.weight": (v, h),
            f"{t}.embeddings.position_embeddings.weight": (p, h),
            f"{t}.embeddings.LayerNorm.weight": (h,),
            f"{t}.embeddings.LayerNorm.bias": (h,),
            f"{t}.embeddings.position_ids": (1, p),
        }
    )
    for i in range(text["num_hidden_layers"]):
        layer = f"{t}.encoder.layer.{i}"
        for part, width in (("attention", h), ("crossattention", d)):
            keys.update(
                {
                    f"{layer}.{part}.self.query.weight": (h, h),
                    f"{layer}.{part}.self.query.bias": (h,),
                    f"{layer}.{part}.self.key.weight": (h, width),
                    f"{layer}.{part}.self.key.bias": (h,),
                    f"{layer}.{part}.self.value.weight": (h, width),
                    f"{layer}.{part}.self.value.bias": (h,),
                    f"{layer}.{part}.output.dense.weight": (h, h),
                    f"{layer}.{part}.output.dense.bias": (h,),
                    f"{layer}.{part}.output.LayerNorm.weight": (h,),
                    f"{layer}.{part}.output.LayerNorm.bias": (h,),
                }
            )
        keys.update(
            {
                f"{layer}.intermediate.dense.weight": (inter, h),
                f"{layer}.intermediate.dense.bias": (inter,),
                f"{layer}.output.dense.weight": (h, inter),
                f"{layer}.output.dense.bias": (h,),
                f"{layer}.output.LayerNorm.weight": (h,),
                f"{layer}.output.LayerNorm.bias": (h,),
            }
        )
    keys.update(
        {
            "blip.vision_proj.weight": (embed_dim, d),
            "blip.vision_proj.bias": (embed_dim,),
            "blip.text_proj.weight": (embed_dim, h),
            "blip.text_proj.bias": (embed_dim,),
        }
    )
    for index, (fan_in, fan_out) in zip((0, 2, 4, 6, 7), ((h, 1024), (1024, 128), (128, 64), (64, 16), (16, 1))):
        keys.update({f"mlp.layers.{index}.weight": (fan_out, fan_in), f"mlp.layers.{index}.bias": (fan_out,)})
    return keys


def test_published_image_reward_layout_loads_strictly():
    """The full-size ImageReward.pt layout (ViT-L/16 at 224 px, BERT-base with cross-attention, 768→…→1 MLP) fits
    the module key for key and shape for shape (built on the meta device: no memory, no download)."""
    layout = original_layout(VISION_CONFIG, TEXT_CONFIG)
    assert len(layout) == 6 + 24 * 12 + 5 + 12 * 26 + 4 + 10
    with torch.device("meta"):
        model = ImageRewardModel()
        state = {k: torch.empty(shape) for k, shape in layout.items()}
    model.load_state_dict(convert_checkpoint(state), strict=True, assign=True)
    with pytest.raises(ValueError, match="unexpected key 'blip.itm_head.weight'"):
        convert_checkpoint({"blip.itm_head.weight": torch.zeros(1)})


def test_published_blip_itm_large_coco_layout():
    """Salesforce/blip-itm-large-coco's config (ViT-L/16 at 384 px, 256-d projections) builds the module our
    BLIP score drives: the heads it reads have the published shapes."""
    from transformers import BlipConfig, BlipForImageTextRetrieval

    config = BlipConfig(
        vision_config=dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=384,
            patch_size=16,
        ),
        text_config=dict(encoder_hidden_size=1024),
        image_text_hidden_size=256,
    )
    with torch.device("meta"):
        state = BlipForImageTextRetrieval(config).state_dict()
    assert state["vision_proj.weight"].shape == (256, 1024) and state["text_proj.weight"].shape == (256, 768)
    assert state["itm_head.weight"].shape == (2, 768)
    assert state["vision_model.embeddings.position_embedding"].shape == (1, 577, 1024)
    assert state["text_encoder.encoder.layer.11.crossattention.self.key.weight"].shape == (768, 1024)


@pytest.fixture(scope="module")
def image_reward_files(tmp_path_factory):
    """A tiny ImageReward checkpoint in the original key layout (random values) and a BERT tokenizer folder."""
    folder = tmp_path_factory.mktemp("tiny_image_reward")
    save_bert_tokenizer(folder)
    text = tiny_text_config(len(WORDS) + 5 + 2)  # + [DEC], [ENC]
    generator = torch.Generator().manual_seed(0)
    layout = original_layout(TINY_VISION, text, embed_dim=8)
    state = {k: 0.2 * torch.randn(shape, generator=generator) for k, shape in layout.items()}
    state["blip.text_encoder.embeddings.position_ids"] = torch.arange(text["max_position_embeddings"]).unsqueeze(0)
    torch.save(state, folder / "ImageReward.pt")
    return folder, state, text


def tiny_image_reward(files) -> ImageRewardModel:
    from rewards_service.scorers.image_reward import blip_tokenizer

    folder, state, text = files
    model = ImageRewardModel(TINY_VISION, text, tokenizer=blip_tokenizer(str(folder)))
    model.load_state_dict(convert_checkpoint(torch.load(folder / "ImageReward.pt", weights_only=True)), strict=True)
    return model.eval().requires_grad_(False)


def test_image_reward_tiny_score_by_hand_and_gradients(image_reward_files):
    _, state, _ = image_reward_files
    model = tiny_image_reward(image_reward_files)
    # the original weights sit where the original code reads them
    torch.testing.assert_close(
        model.visual_encoder.encoder.layers[1].self_attn.qkv.weight,
        state["blip.visual_encoder.blocks.1.attn.qkv.weight"],
    )
    torch.testing.assert_close(model.visual_encoder.embeddings.class_embedding, state["blip.visual_encoder.cls_token"])
    pixels = to_float(images_uint8()).requires_grad_(True)
    scores = model(pixels, PROMPTS)
    # by hand: text [CLS] cross-attending to the ViT tokens, the linear MLP as matrix products, ImageReward's
    # normalization
    from rewards_service.scorers.clip_common import clip_preprocess

    tokens = model.tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert tokens.input_ids[0, 0] == model.tokenizer.cls_token_id and len(model.tokenizer) == len(WORDS) + 7
    with torch.no_grad():
        image_tokens = model.visual_encoder(pixel_values=clip_preprocess(pixels.detach(), 32)).last_hidden_state
        cls = model.text_encoder(
            input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, encoder_hidden_states=image_tokens
        ).last_hidden_state[:, 0]
    h = cls.double()
    for index in (0, 2, 4, 6, 7):
        h = h @ state[f"mlp.layers.{index}.weight"].double().T + state[f"mlp.layers.{index}.bias"].double()
    torch.testing.assert_close(scores.detach().double(), (h.squeeze(-1) - SCORE_MEAN) / SCORE_STD, atol=1e-5, rtol=1e-5)
    scores.sum().backward()
    assert pixels.grad.abs().sum() > 0
    different_prompt = model(pixels.detach(), ["the dog", "a mat"])
    assert not torch.allclose(different_prompt, scores.detach())  # the prompt matters


def test_image_reward_from_files_and_missing_checkpoint(image_reward_files, tmp_path, monkeypatch):
    folder, _, text = image_reward_files
    monkeypatch.setattr("rewards_service.scorers.image_reward.VISION_CONFIG", TINY_VISION)
    monkeypatch.setattr("rewards_service.scorers.image_reward.TEXT_CONFIG", text)
    served = build_scorer(
        "image_reward", checkpoint=str(folder / "ImageReward.pt"), tokenizer=str(folder), device="cpu"
    )
    images = images_uint8()
    expected = tiny_image_reward(image_reward_files)(to_float(images), PROMPTS)
    np.testing.assert_allclose(served.score(images, PROMPTS).rewards, expected.numpy(), atol=1e-5)
    with pytest.raises(
        FileNotFoundError,
        match="cannot find the ImageReward checkpoint 'ImageReward.pt' of "
        "'THUDM/ImageReward'.*checkpoint=/path/to/ImageReward.pt",
    ):
        build_differentiable_reward("image_reward", tokenizer=str(folder))
