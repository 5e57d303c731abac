"""Plots of a run's `metrics.jsonl` (PNG, matplotlib's Agg canvas; no pyplot, no global state).

- `plot_run(run_dir)`: `plots/reward.png` (reward_mean ± reward_std vs epoch and vs wall-clock, the
  cumulative `time_epoch_s`) and `plots/diagnostics.png` (RLCM rows: approx_kl, clipfrac; ROCM rows:
  divergence_mean, objective, grad_norm).
- `plot_runs(run_dirs, out)`: runs overlaid, reward vs wall-clock and vs samples_seen (time-to-reward).
Rows missing a key, or holding NaN for it, are left out of that curve only; a half-written last line is ignored.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np



def _figure(width: float, height: float):
    """A matplotlib Figure on the Agg canvas (imported here: `rlcm --help` stays fast)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of `run_dir/metrics.jsonl` (lines that do not parse, e.g. one being written, are skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass a run folder written by `rlcm train`")
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "epoch" in row:
            rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no metrics rows yet")
    return rows


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def column(rows: list[dict], key: str) -> np.ndarray:
    """`key` of every row as floats, NaN where missing or not a number."""
    return np.array([_number(r.get(key)) for r in rows], dtype=float)


def wall_clock_s(rows: list[dict]) -> np.ndarray:
    """Seconds since the start of the run at the end of each row's epoch (missing epoch times count 0)."""
    return np.nancumsum(column(rows, "time_epoch_s"))


def series(rows: list[dict], key: str, x: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) over the rows whose `key` is a finite number; x defaults to the epoch."""
    xs = column(rows, "epoch") if x is None else np.asarray(x, dtype=float)
    ys = column(rows, key)
    keep = np.isfinite(ys) & np.isfinite(xs)
    return xs[keep], ys[keep]


def _time_axis(seconds: np.ndarray) -> tuple[np.ndarray, str]:
    return (seconds / 60, "wall-clock (minutes)") if seconds.size and seconds.max() >= 120 else (seconds, "wall-clock (seconds)")


def _reward_curve(ax, rows: list[dict], x: np.ndarray | None, label: str = "reward_mean", band: bool = True) -> None:
    xs = column(rows, "epoch") if x is None else np.asarray(x, dtype=float)
    mean, std = column(rows, "reward_mean"), column(rows, "reward_std")
    keep = np.isfinite(xs) & np.isfinite(mean)
    line = ax.plot(xs[keep], mean[keep], marker="o" if keep.sum() <= 30 else None, markersize=3, label=label)[0]
    both = keep & np.isfinite(std)
    if band and both.any():
        ax.fill_between(xs[both], (mean - std)[both], (mean + std)[both], color=line.get_color(), alpha=0.2, label="± reward_std")


def _label(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if xlabel in ("epoch", "samples_seen"):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def _algorithm(rows: list[dict]) -> str:
    return str(rows[-1].get("algorithm", "rlcm"))


def diagnostic_panels(rows: list[dict]) -> list[tuple[str, str]]:
    """(key, title) of the diagnostics the rows' algorithm logs and that hold at least one number."""
    from learner.algorithms import ALGORITHMS

    algorithm = ALGORITHMS.get(_algorithm(rows), ALGORITHMS["rlcm"])
    return [(key, title) for key, title in algorithm.diagnostics if len(series(rows, key)[0])]


def plot_run(run_dir: Path) -> list[Path]:
    """Write `plots/reward.png` and `plots/diagnostics.png` for one run; returns their paths."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    algorithm = _algorithm(rows)
    out = run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    name = f"{run_dir.name} ({algorithm})"

    figure = _figure(11, 4)
    by_epoch, by_time = figure.subplots(1, 2)
    _reward_curve(by_epoch, rows, None)
    seconds, time_label = _time_axis(wall_clock_s(rows))
    _reward_curve(by_time, rows, seconds)
    xs, ys = series(rows, "monitor_reward_mean")
    if len(xs):
        by_epoch.plot(xs, ys, linestyle="--", label="monitor_reward_mean (monitoring rollouts)")
    _label(by_epoch, f"{name}: reward per epoch", "epoch", "reward_mean")
    _label(by_time, f"{name}: reward vs time", time_label, "reward_mean")
    reward_png = out / "reward.png"
    figure.savefig(reward_png, dpi=100)

    panels = diagnostic_panels(rows)
    paths = [reward_png]
    if panels:
        figure = _figure(5.5 * len(panels), 4)
        for ax, (key, title) in zip(np.atleast_1d(figure.subplots(1, len(panels))), panels):
            xs, ys = series(rows, key)
            ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, markersize=3, label=key)
            _label(ax, f"{name}: {title}", "epoch", key)
        paths.append(out / "diagnostics.png")
        figure.savefig(paths[-1], dpi=100)
    return paths


def _run_labels(run_dirs: list[Path]) -> list[str]:
    names = [p.name for p in run_dirs]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in run_dirs]


def plot_runs(run_dirs: list[Path], out: Path) -> Path:
    """Overlay runs: reward_mean vs wall-clock and vs samples_seen (the time-to-reward comparison)."""
    run_dirs = [Path(p) for p in run_dirs]
    if not run_dirs:
        raise ValueError("plot_runs needs at least one run folder")
    runs = [read_metrics(p) for p in run_dirs]
    longest = max(wall_clock_s(rows)[-1] for rows in runs)
    scale, time_label = (60, "wall-clock (minutes)") if longest >= 120 else (1, "wall-clock (seconds)")
    figure = _figure(11, 4.5)
    by_time, by_samples = figure.subplots(1, 2)
    for rows, label in zip(runs, _run_labels(run_dirs)):
        label = f"{label} ({_algorithm(rows)})"
        _reward_curve(by_time, rows, wall_clock_s(rows) / scale, label, band=False)
        _reward_curve(by_samples, rows, column(rows, "samples_seen"), label, band=False)
    _label(by_time, "reward vs wall-clock", time_label, "reward_mean")
    _label(by_samples, "reward vs samples seen", "samples_seen", "reward_mean")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    return out


def _run(args: argparse.Namespace) -> int:
    runs = [Path(r) for r in args.runs]
    for run in runs:
        for path in plot_run(run):
            print(f"wrote {path}")
    if len(runs) > 1 or args.out:
        print(f"wrote {plot_runs(runs, Path(args.out or 'comparison.png'))}")
    return 0


def add_plot_parser(subparsers) -> argparse.ArgumentParser:
    """Register `rlcm plot RUN [RUN ...] [--out FILE]` on the CLI's subparsers."""
    parser = subparsers.add_parser("plot", help="plot runs' metrics (each run's plots/; several runs overlaid in --out)")
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders holding metrics.jsonl")
    parser.add_argument("--out", help="overlay of all runs (default comparison.png when more than one run)")
    parser.set_defaults(func=_run)
    return parser
