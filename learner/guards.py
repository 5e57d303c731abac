"""Guards against non-finite numbers: a step with a NaN/Inf loss or gradient is skipped, never applied; an
adapter with a non-finite weight is never published or saved; too many skipped steps in a row stop the run."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch


class NonFiniteError(RuntimeError):
    """Training produced non-finite numbers it cannot skip past; the message says where and what to change."""


def is_finite(value: torch.Tensor | float) -> bool:
    """True when every entry of `value` is finite (no NaN, no ±Inf)."""
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value).all())
    return math.isfinite(float(value))


def nonfinite_grads(params: Iterable[torch.nn.Parameter]) -> int:
    """How many parameters have a gradient with a non-finite entry (a missing gradient counts as finite)."""
    return sum(1 for p in params if p.grad is not None and not is_finite(p.grad))


def step_problem(loss: torch.Tensor | float, params: Iterable[torch.nn.Parameter]) -> str | None:
    """Why an optimizer step must be skipped ("loss is nan", "2 of 98 gradients are non-finite"), or None."""
    if not is_finite(loss):
        return f"loss is {float(loss) if not isinstance(loss, torch.Tensor) or loss.numel() == 1 else 'non-finite'}"
    params = list(params)
    bad = nonfinite_grads(params)
    return f"{bad} of {len(params)} gradients are non-finite" if bad else None


def nonfinite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the tensors holding a non-finite entry, in the mapping's order."""
    return [name for name, tensor in tensors.items() if not is_finite(tensor)]


def check_adapter(tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise NonFiniteError if any adapter tensor is non-finite; `what` says what was about to happen (publish, save)."""
    bad = nonfinite_tensors(tensors)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise NonFiniteError(
            f"refusing to {what} a LoRA adapter with non-finite weights ({len(bad)} of {len(tensors)} tensors: {shown}); "
            "resume from the last checkpoint with a lower learning rate or a tighter gradient clip"
        )


class SkipStreak:
    """Counts optimizer steps skipped in a row; the `limit`-th raises NonFiniteError (a finite step resets it)."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit, self.in_a_row, self.total = limit, 0, 0

    def record(self, problem: str | None) -> bool:
        """Record one step's outcome (`step_problem`'s answer); True if the step may be applied."""
        if problem is None:
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        self.total += 1
        if self.in_a_row >= self.limit:
            raise NonFiniteError(
                f"{self.in_a_row} optimizer steps in a row were skipped ({problem}); the run is diverging: "
                "resume from the last checkpoint with a lower learning rate or a tighter gradient clip"
            )
        return False
