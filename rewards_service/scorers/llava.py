"""LLaVA-1.5 answerers: batched greedy answers to one question about each image (vLLM or transformers)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from PIL import Image

DEFAULT_LLAVA = "llava-hf/llava-1.5-7b-hf"
PROMPT_TEMPLATE = "USER: <image>\n{question} ASSISTANT:"


class Answerer(Protocol):
    """Answers `question` about each image; an answer may be empty."""

    def answer(self, images: np.ndarray, question: str) -> list[str]: ...


def _pil(images: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(im) for im in images]


class TransformersLlava:
    """LLaVA through transformers (CPU or GPU); greedy decoding."""

    def __init__(
        self,
        model: str = DEFAULT_LLAVA,
        device: str | None = None,
        dtype: str = "float32",
        max_new_tokens: int = 64,
        prompt_template: str = PROMPT_TEMPLATE,
    ) -> None:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        from rewards_service.architectures import is_random, random_llava

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if is_random(model):
            self.model, self.processor = random_llava(model, getattr(torch, dtype))
        else:
            self.processor = AutoProcessor.from_pretrained(model)
            self.model = LlavaForConditionalGeneration.from_pretrained(model, dtype=getattr(torch, dtype))
        self.processor.tokenizer.padding_side = "left"
        self.model = self.model.to(self.device).eval()
        self.max_new_tokens = max_new_tokens
        self.prompt_template = prompt_template

    @torch.no_grad()
    def answer(self, images: np.ndarray, question: str) -> list[str]:
        prompts = [self.prompt_template.format(question=question)] * len(images)
        inputs = self.processor(images=_pil(images), text=prompts, return_tensors="pt", padding=True).to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return [a.strip() for a in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]


class VllmLlava:
    """LLaVA through a vLLM engine on one GPU: the whole batch in one generate call, greedy."""

    def __init__(
        self,
        model: str = DEFAULT_LLAVA,
        dtype: str = "float16",
        max_new_tokens: int = 64,
        gpu_memory_utilization: float = 0.8,
        max_model_len: int = 4096,
        prompt_template: str = PROMPT_TEMPLATE,
    ) -> None:
        try:
            from vllm import LLM, SamplingParams
        except ImportError:
            raise ImportError(
                "the vllm backend needs vLLM on a GPU machine: pip install 'rlcm[vllm]' (or use backend: transformers)"
            ) from None
        self.llm = LLM(
            model=model,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            limit_mm_per_prompt={"image": 1},
        )
        self.sampling = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
        self.prompt_template = prompt_template

    def answer(self, images: np.ndarray, question: str) -> list[str]:
        prompt = self.prompt_template.format(question=question)
        requests = [{"prompt": prompt, "multi_modal_data": {"image": im}} for im in _pil(images)]
        outputs = self.llm.generate(requests, self.sampling, use_tqdm=False)
        return [o.outputs[0].text.strip() for o in outputs]


def build_answerer(backend: str, **options) -> Answerer:
    """`backend` is 'vllm' or 'transformers'."""
    if backend == "vllm":
        return VllmLlava(**options)
    if backend == "transformers":
        return TransformersLlava(**options)
    raise ValueError(f"unknown LLaVA backend {backend!r}; use 'vllm' (GPU) or 'transformers'")


def answers_batch(answerer: Answerer, images: np.ndarray, question: str) -> Sequence[str]:
    """Answers for a batch, checked to have one per image."""
    answers = answerer.answer(images, question)
    if len(answers) != len(images):
        raise RuntimeError(f"LLaVA returned {len(answers)} answers for {len(images)} images")
    return answers
