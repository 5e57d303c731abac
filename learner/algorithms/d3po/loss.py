"""D3PO's per-step loss (Yang et al., CVPR 2024, eq. for the per-step DPO objective; yk7333/d3po `train_d3po.py`).

For a pair whose preferred sample is w and other sample l, at denoising step k with recorded state s_k and action
a_k (both samples at the same k):

    h(a_k|s_k) = log clip(π_θ(a_k|s_k) / π_ref(a_k|s_k), 1 − ε, 1 + ε)        (no clip when ε is None)
    L_k        = −log σ(β·[h(a_k^w|s_k^w) − h(a_k^l|s_k^l)])

π_ref is the frozen base (LoRA disabled) at the same recorded states. A pair of weight 0 (a tie or skip kept for an
equal step count across ranks) adds nothing. The call's loss is the mean over its pairs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def clipped_log_ratio(log_pi: torch.Tensor, log_ref: torch.Tensor, eps: float | None) -> torch.Tensor:
    """log clip(π_θ/π_ref, 1 − ε, 1 + ε), as a clamp of the log-ratio (same value, same zero gradient when clipped)."""
    log_ratio = log_pi - log_ref
    return log_ratio if eps is None else log_ratio.clamp(math.log1p(-eps), math.log1p(eps))


def d3po_loss(
    log_pi_w: torch.Tensor,
    log_ref_w: torch.Tensor,
    log_pi_l: torch.Tensor,
    log_ref_l: torch.Tensor,
    weight: torch.Tensor,
    beta: float,
    eps: float | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean over the call's pairs of weight·L_k; diagnostics: the implicit reward margin β·[(log π_θ − log π_ref)(w)
    − (log π_θ − log π_ref)(l)] (unclipped) averaged and its share > 0 over the weighted pairs, and the clipped share
    of the ratios."""
    h_w = clipped_log_ratio(log_pi_w, log_ref_w, eps)
    h_l = clipped_log_ratio(log_pi_l, log_ref_l, eps)
    loss = -(weight * F.logsigmoid(beta * (h_w - h_l))).mean()
    with torch.no_grad():
        used = weight > 0
        margin = beta * ((log_pi_w - log_ref_w) - (log_pi_l - log_ref_l))
        ratios = torch.cat([(log_pi_w - log_ref_w)[used], (log_pi_l - log_ref_l)[used]])
        info = {
            "implicit_margin": margin[used].mean() if used.any() else margin.new_tensor(float("nan")),
            "preference_accuracy": (margin[used] > 0).float().mean() if used.any() else margin.new_tensor(float("nan")),
            "clipfrac": (ratios != clipped_log_ratio(ratios, torch.zeros_like(ratios), eps)).float().mean()
            if used.any()
            else margin.new_tensor(float("nan")),
        }
    return loss, info
