"""Prompt sets of the RLCM tasks (shipped in `rlcm/config/prompts/`) and a seeded per-epoch picker."""

from __future__ import annotations

from importlib import resources

import numpy as np


def _lines(name: str) -> list[str]:
    text = (resources.files("rlcm.config") / "prompts" / name).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def load_prompts(source: str, limit: int | None = None) -> list[str]:
    """`imagenet_animals` (first name of each class), `simple_animals`, or `animals_activities`."""
    if source == "imagenet_animals":
        prompts = [line.split(",")[0].strip() for line in _lines("imagenet_animals.txt")]
    elif source == "simple_animals":
        prompts = _lines("simple_animals.txt")
    elif source == "animals_activities":
        prompts = [f"{_article(a)} {a} {act}" for a in _lines("simple_animals.txt") for act in _lines("activities.txt")]
    else:
        raise ValueError(
            f"unknown prompt source {source!r}; use imagenet_animals, simple_animals or animals_activities"
        )
    return prompts[:limit] if limit else prompts


def epoch_prompts(prompts: list[str], seed: int, epoch: int, count: int, distinct: bool = False) -> list[str]:
    """`count` prompts drawn with replacement, or `distinct`: without (each prompt once before any repeats);
    a pure function of (seed, epoch) so a resumed run draws the same."""
    rng = np.random.default_rng([seed, epoch])
    if distinct:
        rounds = -(-count // len(prompts))
        return [prompts[i] for i in np.concatenate([rng.permutation(len(prompts)) for _ in range(rounds)])[:count]]
    return [prompts[i] for i in rng.integers(0, len(prompts), size=count)]


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    """The sampling-noise seed of one rollout batch (stable across restarts and resubmissions)."""
    return int(np.random.default_rng([seed, epoch, batch, 7]).integers(0, 2**62))


def holdout_split(prompts: list[str], fraction: float = 0.1, min_held: int = 1) -> tuple[list[str], list[str]]:
    """(train, held-out): the last max(⌈fraction·n⌉, min_held) prompts, at most half of them, are held out for
    monitoring (all of them if n = 1). min_held = the monitor batch size gives a batch of distinct prompts."""
    held = min(max(1, min_held, int(np.ceil(fraction * len(prompts)))), max(1, len(prompts) // 2))
    return (prompts[:-held] or prompts), prompts[-held:]
