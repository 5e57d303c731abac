"""Prompt alignment: BERTScore recall of LLaVA's answer against "The image contains {prompt}"."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from rewards_service.scorers.base import ScoreResult, check_batch
from rewards_service.scorers.llava import DEFAULT_LLAVA, Answerer, answers_batch, build_answerer

QUESTION = "Answer concisely: what is going on in this image?"
REFERENCE = "The image contains {prompt}"
DEFAULT_BERTSCORE = "microsoft/deberta-xlarge-mnli"


def references(prompts: Sequence[str], template: str = REFERENCE) -> list[str]:
    """The reference sentence of each prompt."""
    return [template.format(prompt=p) for p in prompts]


class LlavaBertScore:
    """Reward = BERTScore recall(answer, reference). Empty answers are invalid samples, counted in details."""

    name = "llava_bertscore"

    def __init__(
        self,
        model: str = DEFAULT_LLAVA,
        backend: Literal["vllm", "transformers"] = "vllm",
        bertscore_model: str = DEFAULT_BERTSCORE,
        bertscore_num_layers: int | None = None,
        bertscore_batch_size: int = 64,
        device: str | None = None,
        question: str = QUESTION,
        reference_template: str = REFERENCE,
        version: str = "1",
        answerer: Answerer | None = None,
        **llava_options: Any,
    ) -> None:
        from bert_score import BERTScorer

        from rewards_service.architectures import is_random, random_bertscorer

        self.version = version
        self.question = question
        self.reference_template = reference_template
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if answerer is None:
            options = {**llava_options, **({"device": device} if backend == "transformers" else {})}
            answerer = build_answerer(backend, model=model, **options)
        self.answerer = answerer
        if is_random(bertscore_model):
            self.bertscore = random_bertscorer(
                bertscore_model, bertscore_num_layers, batch_size=bertscore_batch_size, device=device
            )
        else:
            self.bertscore = BERTScorer(
                model_type=bertscore_model,
                num_layers=bertscore_num_layers,
                batch_size=bertscore_batch_size,
                device=device,
            )

    def recall(self, answers: Sequence[str], refs: Sequence[str]) -> list[float]:
        """BERTScore recall of each non-empty answer against its reference."""
        if not answers:
            return []
        _, recall, _ = self.bertscore.score(list(answers), list(refs))
        return [float(r) for r in recall]

    def score(self, images: np.ndarray, prompts: Sequence[str]) -> ScoreResult:
        check_batch(images, prompts)
        answers = list(answers_batch(self.answerer, images, self.question))
        refs = references(prompts, self.reference_template)
        keep = [i for i, a in enumerate(answers) if a.strip()]
        rewards = [float("nan")] * len(answers)
        for i, r in zip(keep, self.recall([answers[i] for i in keep], [refs[i] for i in keep])):
            rewards[i] = r
        empty = [not a.strip() for a in answers]
        return ScoreResult(
            rewards=rewards,
            version=self.version,
            valid=[not e for e in empty],
            details={"answers": answers, "empty_answer": empty},
        )
