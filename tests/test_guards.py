"""Non-finite guards: which steps are skipped, which adapters are refused, when a run stops."""

from __future__ import annotations

import math

import pytest
import torch

from learner.guards import (
    NonFiniteError,
    SkipStreak,
    check_adapter,
    grad_norm_metrics,
    nonfinite_grads,
    nonfinite_tensors,
    step_if_finite,
    step_problem,
)


def params_with_grads(*grads):
    params = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros(3))
        p.grad = None if g is None else torch.tensor(g)
        params.append(p)
    return params


def test_step_problem_names_the_loss_or_the_gradients():
    fine = params_with_grads([1.0, 2.0, 3.0], None)
    assert step_problem(torch.tensor(0.5), fine) is None
    assert step_problem(torch.tensor(math.nan), fine) == "loss is nan"
    assert step_problem(math.inf, fine) == "loss is inf"
    bad = params_with_grads([1.0, math.nan, 0.0], [math.inf, 0.0, 0.0], [0.0, 0.0, 0.0])
    assert nonfinite_grads(bad) == 2
    assert step_problem(torch.tensor(0.5), bad) == "2 of 3 gradients are non-finite"


def test_adapter_with_a_non_finite_weight_is_refused_naming_tensors():
    state = {
        "a.lora_A": torch.ones(2, 2),
        "a.lora_B": torch.tensor([[0.0, math.nan]]),
        "b.lora_A": torch.tensor([-math.inf]),
    }
    assert nonfinite_tensors(state) == ["a.lora_B", "b.lora_A"]
    with pytest.raises(
        NonFiniteError,
        match=r"refusing to publish a LoRA adapter with non-finite weights \(2 of 3 tensors: a.lora_B, b.lora_A\)",
    ):
        check_adapter(state, "publish")
    check_adapter({"a": torch.zeros(4)}, "save")


def test_skip_streak_resets_on_a_finite_step_and_stops_at_the_limit():
    streak = SkipStreak(limit=3)
    assert streak.record(None) is True
    assert streak.record("loss is nan") is False and streak.record("loss is nan") is False
    assert streak.record(None) is True and streak.in_a_row == 0 and streak.total == 2
    streak.record("loss is nan")
    streak.record("loss is nan")
    with pytest.raises(
        NonFiniteError, match="3 optimizer steps in a row were skipped \\(1 of 98 gradients are non-finite\\)"
    ):
        streak.record("1 of 98 gradients are non-finite")


def test_a_step_with_non_finite_gradients_is_not_applied():
    w = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([w], lr=0.1)
    (w * torch.tensor([1.0, math.nan, 1.0])).sum().backward()
    norm = torch.nn.utils.clip_grad_norm_([w], 1.0)
    assert step_if_finite(optimizer, [w], norm) is False
    assert (
        torch.equal(w.detach(), torch.ones(3)) and w.grad is None and not optimizer.state
    )  # untouched, Adam state too
    (w * 2).sum().backward()
    assert step_if_finite(optimizer, [w], torch.nn.utils.clip_grad_norm_([w], 1.0)) is True
    assert (w.detach() < 1).all()
    assert grad_norm_metrics([1.0, math.nan, 3.0]) == {"grad_norm": 2.0, "nonfinite_steps": 1.0}
    assert math.isnan(grad_norm_metrics([math.inf])["grad_norm"])
