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


def step_if_finite(
    optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], grad_norm: torch.Tensor | float
) -> bool:
    """Apply `optimizer.step()` only when the gradients (their norm, after any all-reduce) are finite; zero them either
    way. Returns whether the step was applied. A NaN/Inf loss gives non-finite gradients, so it is skipped too; every
    data-parallel rank sees the same all-reduced norm, so all ranks skip together."""
    applied = is_finite(grad_norm) and nonfinite_grads(params) == 0
    if applied:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return applied


def grad_norm_metrics(grad_norms: list[float]) -> dict[str, float]:
    """`grad_norm`: mean over the applied (finite) steps; `nonfinite_steps`: how many steps were skipped."""
    finite = [g for g in grad_norms if math.isfinite(g)]
    return {
        "grad_norm": sum(finite) / len(finite) if finite else math.nan,
        "nonfinite_steps": float(len(grad_norms) - len(finite)),
    }


def nonfinite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the tensors holding a non-finite entry, in the mapping's order."""
    return [name for name, tensor in tensors.items() if not is_finite(tensor)]


def check_adapter(tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise NonFiniteError if any adapter tensor is non-finite; `what` says what was about to happen (publish,
    save)."""
    bad = nonfinite_tensors(tensors)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise NonFiniteError(
            f"refusing to {what} a LoRA adapter with non-finite weights ({len(bad)} of {len(tensors)} tensors: "
            f"{shown}); resume from the last checkpoint with a lower learning rate or a tighter gradient clip"
        )


class SkipStreak:
    """Counts skipped optimizer steps (or whole updates: `what`) in a row; the `limit`-th raises NonFiniteError
    (one that is applied resets the count)."""

    def __init__(self, limit: int, what: str = "optimizer steps", key: str | None = None):
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit, self.what, self.key, self.in_a_row, self.total = limit, what, key, 0, 0

    def record(self, problem: str | None) -> bool:
        """Record one step's outcome (`step_problem`'s answer); True if the step may be applied."""
        if problem is None:
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        self.total += 1
        if self.in_a_row >= self.limit:
            limit = f" ({self.key}={self.limit})" if self.key else ""
            raise NonFiniteError(
                f"{self.in_a_row} {self.what} in a row were skipped{limit} ({problem}); the run is diverging: "
                "resume from the last checkpoint with a lower learning rate or a tighter gradient clip"
            )
        return False
