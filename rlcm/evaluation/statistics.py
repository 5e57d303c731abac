"""Mean ± 95% Student t-interval over prompts × seeds, paired differences to the base, the off-target change
(scipy's t quantile when installed, else a table)."""

from __future__ import annotations

import math

import numpy as np

# Two-sided 95% Student t quantiles t_{0.975, df}, df = 1..30 (beyond 30: Cornish-Fisher expansion).
T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)
Z975 = 1.959964


def t_quantile_975(df: int) -> tuple[float, str]:
    """t_{0.975, df} and where it came from ("scipy" or "table")."""
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, df)), "scipy"
    except ImportError:
        return t_table_975(df), "table"


def t_table_975(df: int) -> float:
    """Table for df ≤ 30; above, t ≈ z + (z³+z)/(4df) + (5z⁵+16z³+3z)/(96df²) (error < 1e-3)."""
    if df < 1:
        raise ValueError(f"a t quantile needs df ≥ 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values: np.ndarray) -> dict:
    """Mean with a two-sided 95% t-interval over the finite values (NaN = unscored samples, left out)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    n = len(values)
    mean = float(values.mean()) if n else float("nan")
    half, source = float("nan"), "none"
    if n >= 2:
        quantile, source = t_quantile_975(n - 1)
        half = quantile * float(values.std(ddof=1)) / math.sqrt(n)
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "half_width": half, "n": n, "t_source": source}


def summarize(scores: dict[str, np.ndarray]) -> dict:
    """Per model mean ± CI; with a `base`, each run's paired difference run − base (samples both scored) under "<run> −
    base"."""
    summary = {label: mean_ci(values) for label, values in scores.items()}
    if "base" in scores:
        summary.update(
            {f"{label} − base": mean_ci(values - scores["base"]) for label, values in scores.items() if label != "base"}
        )
    return summary


def off_target_change(metrics: dict[str, dict], run: str, trained: str | None) -> float:
    """Mean relative change (run − base)/|base| in % over the metrics `run` did not train on (NaN without a base)."""
    changes = [
        100 * (stats[run]["mean"] - stats["base"]["mean"]) / abs(stats["base"]["mean"])
        for name, stats in metrics.items()
        if name != trained
        and "base" in stats
        and run in stats
        and stats["base"]["mean"] not in (0.0,)
        and math.isfinite(stats["base"]["mean"])
    ]
    return float(np.mean(changes)) if changes else float("nan")
