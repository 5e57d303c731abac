"""Per-prompt reward normalization (DDPO/RLCM): advantages from running per-prompt statistics."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np


class PerPromptStatTracker:
    """Keeps the last `buffer_size` rewards of each prompt.

    A prompt's advantage is (r − mean) / (std + 1e-6) over its buffer once the buffer holds at
    least `min_count` rewards; before that, over the whole batch.
    """

    def __init__(self, buffer_size: int, min_count: int):
        if buffer_size < 1 or min_count < 1:
            raise ValueError(f"buffer_size and min_count must be >= 1, got {buffer_size} and {min_count}")
        self.buffer_size = buffer_size
        self.min_count = min_count
        self.buffers: dict[str, deque[float]] = {}

    def update(self, prompts: Sequence[str], rewards: np.ndarray) -> np.ndarray:
        """Add the batch's rewards to the buffers and return one advantage per sample."""
        rewards = np.asarray(rewards, dtype=np.float64)
        if len(prompts) != len(rewards):
            raise ValueError(f"{len(prompts)} prompts but {len(rewards)} rewards")
        if not np.all(np.isfinite(rewards)):
            raise ValueError("rewards must be finite; drop invalid samples before computing advantages")
        prompts_arr = np.asarray(prompts, dtype=object)
        advantages = np.empty_like(rewards)
        for prompt in dict.fromkeys(prompts):
            mask = prompts_arr == prompt
            buffer = self.buffers.setdefault(prompt, deque(maxlen=self.buffer_size))
            buffer.extend(rewards[mask].tolist())
            reference = rewards if len(buffer) < self.min_count else np.asarray(buffer)
            advantages[mask] = (rewards[mask] - reference.mean()) / (reference.std() + 1e-6)
        return advantages

    def stats(self) -> dict[str, float]:
        """Prompts tracked, mean buffer fill, share of prompts past `min_count` (own statistics), mean per-prompt
        std."""
        buffers = [np.asarray(b) for b in self.buffers.values()]
        if not buffers:
            return {"num_prompts": 0, "mean_count": 0.0, "frac_own_stats": 0.0, "mean_prompt_std": 0.0}
        return {
            "num_prompts": len(buffers),
            "mean_count": float(np.mean([len(b) for b in buffers])),
            "frac_own_stats": float(np.mean([len(b) >= self.min_count for b in buffers])),
            "mean_prompt_std": float(np.mean([b.std() for b in buffers])),
        }

    def state_dict(self) -> dict:
        return {
            "buffer_size": self.buffer_size,
            "min_count": self.min_count,
            "buffers": {p: list(b) for p, b in self.buffers.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.buffer_size, self.min_count = state["buffer_size"], state["min_count"]
        self.buffers = {p: deque(b, maxlen=self.buffer_size) for p, b in state["buffers"].items()}
