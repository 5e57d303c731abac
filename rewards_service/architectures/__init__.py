"""Reward backbones at their real size with random weights, from configs shipped here (no hub files).

A model option `random:<hub id>` (e.g. `clip_model: random:openai/clip-vit-large-patch14`) builds that
model's architecture with random weights; `rlcm train --dry-run` uses it to run every reward path.
LLaVA-1.5 keeps its real vision tower, projector, embedding and width but only `LLAVA_LAYERS` of its 32
language-model layers. Tokenizers: the CLIP BPE vocabulary (shipped here) where CLIP uses it; for
LLaVA (LLaMA, 32064 tokens) and DeBERTa (50265) a word-level tokenizer of the same size and special tokens.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import torch

RANDOM_PREFIX = "random:"
LLAVA_LAYERS = 2
CONFIGS = {
    "openai/clip-vit-large-patch14": "clip-vit-large-patch14",
    "yuvalkirstain/PickScore_v1": "clip-vit-h-14",
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K": "clip-vit-h-14",
    "llava-hf/llava-1.5-7b-hf": "llava-1.5-7b",
    "microsoft/deberta-xlarge-mnli": "deberta-xlarge-mnli",
}


def is_random(name: str | None) -> bool:
    return bool(name) and name.startswith(RANDOM_PREFIX)


def shipped_config(name: str) -> dict[str, Any]:
    hub_id = name.removeprefix(RANDOM_PREFIX)
    if hub_id not in CONFIGS:
        raise ValueError(f"no shipped architecture for {hub_id!r}; random weights are available for {sorted(CONFIGS)}")
    return json.loads(
        (Path(str(resources.files("rewards_service.architectures"))) / f"{CONFIGS[hub_id]}.json").read_text()
    )


@contextmanager
def default_dtype(dtype: torch.dtype | None):
    """Build parameters directly in `dtype` (no fp32 copy first: a ViT-H is 4 GB in fp32)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype or previous)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


VOCAB_FILE = Path(__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
"""OpenAI CLIP's BPE vocabulary (MIT license), shipped here as open_clip ships it: no package pulls it in."""


def _bpe_vocab() -> tuple[list[str], list[str]]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    lines = gzip.open(VOCAB_FILE).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    chars = list(bytes_to_unicode().values())
    tokens = (
        chars
        + [c + "</w>" for c in chars]
        + [m.replace(" ", "") for m in merges]
        + ["<|startoftext|>", "<|endoftext|>"]
    )
    return tokens, merges


def clip_tokenizer(model_max_length: int = 77):
    """The CLIP BPE tokenizer (49408 tokens) built as OpenAI's CLIP does: bytes, bytes + </w>, merges, 2 specials."""
    from transformers import CLIPTokenizer

    tokens, merges = _bpe_vocab()
    return CLIPTokenizer(
        vocab={t: i for i, t in enumerate(tokens)},
        merges=[tuple(m.split()) for m in merges],
        model_max_length=model_max_length,
    )


def word_level_tokenizer(vocab_size: int, specials: dict[str, int], **special_roles: str):
    """A fast word-level tokenizer with exactly `vocab_size` ids: `specials` at their ids, CLIP words elsewhere."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = list(dict.fromkeys(t.removesuffix("</w>") for t in _bpe_vocab()[0] if t.endswith("</w>")))
    vocab, free = dict(specials), iter(w for w in words if w not in specials)
    for i in range(vocab_size):
        if i not in specials.values():
            vocab[next(free, f"<extra_{i}>")] = i
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=special_roles.get("unk_token")))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, **special_roles)


def random_pretrained(loader: Callable[..., Any], name: str, dtype: torch.dtype | None = None, **_: Any) -> Any:
    """What `loader` (a `from_pretrained` of a transformers class) would return for `name`, with random weights."""
    from transformers import AutoProcessor, CLIPConfig, CLIPImageProcessor, CLIPProcessor

    owner = getattr(loader, "__self__", None)
    config = shipped_config(name)
    if owner is AutoProcessor:
        size = config["vision_config"]["image_size"]
        image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        return CLIPProcessor(image_processor=image_processor, tokenizer=clip_tokenizer())
    clip = CLIPConfig(**config)
    model_config = clip.vision_config if owner.config_class.__name__ == "CLIPVisionConfig" else clip
    with torch.random.fork_rng(devices=[]), default_dtype(dtype):
        torch.manual_seed(0)
        return owner(model_config).eval()


def random_llava(name: str, dtype: torch.dtype):
    """LLaVA-1.5 with random weights, its language model cut to `LLAVA_LAYERS` layers (real width); its processor."""
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    config = shipped_config(name)
    config["text_config"]["num_hidden_layers"] = LLAVA_LAYERS
    size = config["vision_config"]["image_size"]
    tokenizer = word_level_tokenizer(
        config["text_config"]["vocab_size"],
        {"<unk>": 0, "<s>": 1, "</s>": 2, "<image>": 32000, "<pad>": 32001},
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=config["vision_config"]["patch_size"],
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    with torch.random.fork_rng(devices=[]), default_dtype(dtype):
        torch.manual_seed(0)
        model = LlavaForConditionalGeneration(LlavaConfig(**config)).eval()
    return model, processor


def random_deberta(name: str):
    """DeBERTa-xlarge-MNLI's encoder with random weights and a 50265-word tokenizer ([CLS] text [SEP])."""
    from tokenizers import processors
    from transformers import DebertaConfig, DebertaModel

    config = shipped_config(name)
    tokenizer = word_level_tokenizer(
        config["vocab_size"],
        {"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[UNK]": 3},
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_max_length=config["max_position_embeddings"],
    )
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = DebertaModel(DebertaConfig(**{k: v for k, v in config.items() if k != "model_type"})).eval()
    return model, tokenizer


def random_bertscorer(name: str, num_layers: int | None, **options: Any):
    """A `bert_score.BERTScorer` over the random DeBERTa (the scorer's own layer choice for the real model)."""
    from unittest import mock

    import bert_score.scorer as scorer_module
    from bert_score.utils import model2layers

    hub_id = name.removeprefix(RANDOM_PREFIX)
    model, tokenizer = random_deberta(name)
    layers = num_layers or model2layers[hub_id]
    model.encoder.layer = torch.nn.ModuleList(model.encoder.layer[:layers])
    with (
        mock.patch.object(scorer_module, "get_model", lambda *a, **k: model),
        mock.patch.object(scorer_module, "get_tokenizer", lambda *a, **k: tokenizer),
    ):
        return scorer_module.BERTScorer(model_type=hub_id, num_layers=layers, **options)
