"""Gaussian f-divergences (learner/divergences.py) against numerical integration of their definitions on a 1-D grid."""

from __future__ import annotations

import math

import pytest
import torch

from learner.divergence_kinds import DIVERGENCES
from learner.divergences import gaussian_divergence

CASES = [(0.3, 1.0), (-1.5, 0.5), (2.0, 0.25), (0.05, 0.03)]  # (Δ, σ)
CLOSED_FORMS = ("kl", "reverse_kl", "hellinger", "fisher")


def numerical_divergence(kind: str, mean_p: float, mean_q: float, std: float) -> float:
    """The definition of each divergence, integrated with the trapezoid rule in fp64 (no closed forms)."""
    lo, hi = min(mean_p, mean_q) - 14 * std, max(mean_p, mean_q) + 14 * std
    x = torch.linspace(lo, hi, 40001, dtype=torch.float64)
    log_p = -0.5 * ((x - mean_p) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)
    log_q = -0.5 * ((x - mean_q) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)
    p, q = log_p.exp(), log_q.exp()
    if kind == "kl":
        integrand = p * (log_p - log_q)
    elif kind == "reverse_kl":
        integrand = q * (log_q - log_p)
    elif kind == "hellinger":
        return 1.0 - torch.trapezoid((p * q).sqrt(), x).item()
    elif kind == "fisher":
        (score_p,), (score_q,) = torch.gradient(log_p, spacing=(x,)), torch.gradient(log_q, spacing=(x,))
        integrand = p * (score_p - score_q) ** 2
    elif kind == "js":
        log_m = torch.logaddexp(log_p, log_q) - math.log(2)
        integrand = 0.5 * p * (log_p - log_m) + 0.5 * q * (log_q - log_m)
    else:
        raise AssertionError(kind)
    return torch.trapezoid(integrand, x).item()


@pytest.mark.parametrize("kind", CLOSED_FORMS)
@pytest.mark.parametrize("delta,std", CASES)
def test_closed_forms_match_numerical_integration(kind, delta, std):
    mean_p = torch.tensor([[0.7 + delta]], dtype=torch.float64)
    mean_q = torch.tensor([[0.7]], dtype=torch.float64)
    value = gaussian_divergence(kind, mean_p, mean_q, std)
    assert value.shape == (1,)
    assert value.item() == pytest.approx(numerical_divergence(kind, 0.7 + delta, 0.7, std), rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("kind", CLOSED_FORMS)
def test_average_over_dims_with_per_sample_std(kind):
    generator = torch.Generator().manual_seed(0)
    mean_p = torch.randn(2, 2, 1, 2, generator=generator, dtype=torch.float64)
    mean_q = torch.randn(2, 2, 1, 2, generator=generator, dtype=torch.float64)
    std = torch.tensor([0.8, 1.3], dtype=torch.float64).view(2, 1, 1, 1)
    value = gaussian_divergence(kind, mean_p, mean_q, std)
    for b in range(2):
        per_dim = [
            numerical_divergence(kind, mp.item(), mq.item(), std[b].item())
            for mp, mq in zip(mean_p[b].flatten(), mean_q[b].flatten())
        ]
        assert value[b].item() == pytest.approx(sum(per_dim) / len(per_dim), rel=1e-6)


@pytest.mark.parametrize("num_samples", [1, 8])
@pytest.mark.parametrize("delta,std", [(0.4, 1.0), (-3.0, 0.5)])
def test_js_estimate_within_sampling_error(delta, std, num_samples):
    rows = 40000 // num_samples  # each row is one independent estimate
    mean_p = torch.full((rows, 1), 0.2 + delta, dtype=torch.float64)
    mean_q = torch.full((rows, 1), 0.2, dtype=torch.float64)
    estimates = gaussian_divergence(
        "js", mean_p, mean_q, std, torch.Generator().manual_seed(1), num_samples=num_samples
    )
    standard_error = estimates.std().item() / math.sqrt(rows)
    exact = numerical_divergence("js", 0.2 + delta, 0.2, std)
    assert 0 < exact < math.log(2)
    assert abs(estimates.mean().item() - exact) < 4 * standard_error, (estimates.mean().item(), exact, standard_error)


def test_js_pathwise_gradient_is_unbiased():
    delta, std, rows, step = 0.8, 0.6, 40000, 1e-4
    mean_p = torch.full((rows, 1), delta, dtype=torch.float64, requires_grad=True)
    mean_q = torch.zeros((rows, 1), dtype=torch.float64, requires_grad=True)
    gaussian_divergence("js", mean_p, mean_q, std, torch.Generator().manual_seed(2)).sum().backward()
    exact = (
        numerical_divergence("js", delta + step, 0.0, std) - numerical_divergence("js", delta - step, 0.0, std)
    ) / (2 * step)
    grads = mean_p.grad.flatten()
    assert abs(grads.mean().item() - exact) < 4 * grads.std().item() / math.sqrt(rows)
    torch.testing.assert_close(mean_q.grad, -mean_p.grad)


@pytest.mark.parametrize("kind", [k for k in DIVERGENCES if k != "none"])
def test_gradient_reaches_both_means(kind):
    mean_p = torch.tensor([[0.5, -0.2], [1.0, 0.1]], requires_grad=True)
    mean_q = torch.tensor([[0.1, 0.3], [0.0, 0.4]], requires_grad=True)
    value = gaussian_divergence(
        kind, mean_p, mean_q, torch.tensor([0.7, 0.9]).view(2, 1), torch.Generator().manual_seed(3)
    )
    assert value.shape == (2,) and torch.all(value != 0)  # a one-draw JS estimate may be negative
    value.sum().backward()
    for grad in (mean_p.grad, mean_q.grad):
        assert grad is not None and torch.isfinite(grad).all() and torch.all(grad != 0)


def test_none_is_zero_and_equal_means_give_zero():
    mean = torch.randn(3, 4, 2, 2)
    assert torch.equal(gaussian_divergence("none", mean, mean + 1, 0.5), torch.zeros(3))
    for kind in CLOSED_FORMS:
        assert torch.equal(gaussian_divergence(kind, mean, mean.clone(), 0.5), torch.zeros(3))


def test_unknown_kind_names_the_choices():
    with pytest.raises(ValueError, match="unknown divergence 'tv'.*'kl'.*'hellinger'.*'js'"):
        gaussian_divergence("tv", torch.zeros(1, 1), torch.zeros(1, 1), 1.0)
