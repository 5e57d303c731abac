"""Plots of a run's `metrics.jsonl` (PNG, matplotlib's Agg canvas; no pyplot, no global state).

- `plot_run(run_dir)`: `plots/reward.png` (reward_mean ± reward_std vs epoch and vs wall-clock, the
  cumulative `time_epoch_s`; ROCM: the held-out monitor reward on its own axes) and `plots/diagnostics.png`
  (RLCM rows: approx_kl on a log scale, clipfrac, the rollout/learner log-prob gap per denoising step,
  ratio_first_pass_max_dev; ROCM rows: divergence_mean, objective, grad_norm).
- `plot_runs(run_dirs, out)`: runs overlaid, reward vs wall-clock and vs samples_seen (time-to-reward); runs
  of different rewards never share an axis: one row of panels per reward.
Reward axes name the reward and its unit (from the run's config.yaml). Rows missing a key, or holding NaN
for it, are left out of that curve only; a half-written last line is ignored.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import yaml

REWARD_UNITS = {
    "jpeg_compressibility": "−JPEG size, kB",
    "jpeg_incompressibility": "JPEG size, kB",
    "smoothness": "−10 · mean |∇image|",
    "aesthetic": "LAION aesthetic score, 1–10",
    "clip_score": "CLIP image–text cosine × 100",
    "pickscore": "PickScore",
    "hpsv2": "HPSv2 score",
    "llava_bertscore": "BERTScore recall, 0–1",
}
LOG_SCALE = ("approx_kl", "old_logprob_gap_step", "ratio_first_pass_max_dev")
"""Diagnostics whose values span decades (1e-2 … 1e-8): a linear axis would show most epochs as zero."""
TARGETS = {"divergence_mean": "lam_divergence_target"}
"""Diagnostics drawn with their target (dashed) where the rows log one: ROCM's `lam: auto` steers D̄ to it."""


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


def step_series(rows: list[dict], key: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{label: (x, y)}: one series per sub-key of a dict-valued metric (`old_logprob_gap_step`: {"k": value}),
    sorted by sub-key, labelled "key[k]"; a plain metric is one series labelled `key`."""
    subkeys = {k for r in rows if isinstance(r.get(key), dict) for k in r[key]}
    if not subkeys:
        return {key: series(rows, key)}
    flat = [{**(r.get(key) or {}), "epoch": r.get("epoch")} for r in rows]
    ordered = sorted(subkeys, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))
    return {f"{key}[{k}]": series(flat, k) for k in ordered}


def _time_axis(seconds: np.ndarray) -> tuple[np.ndarray, str]:
    return (
        (seconds / 60, "wall-clock (minutes)")
        if seconds.size and seconds.max() >= 120
        else (seconds, "wall-clock (seconds)")
    )


def run_rewards(run_dir: Path) -> tuple[str, str | None]:
    """(trained reward, ROCM's held-out monitor reward or None) from the run's config.yaml ("reward" if it is
    missing)."""
    path = Path(run_dir) / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return "reward", None
    reward = config.get("reward") or {}
    name = str(reward.get("name", "jpeg_compressibility"))
    monitor = str(reward.get("monitor") or name) if _source(config.get("algorithm")).learners_sample else None
    return name, monitor


def reward_label(name: str, key: str = "reward_mean") -> str:
    """Axis label: the reward and its unit ("monitor: ..." for ROCM's held-out monitor)."""
    unit = REWARD_UNITS.get(name)
    return ("monitor: " if key.startswith("monitor") else "") + name + (f" ({unit})" if unit else "")


def _reward_curve(
    ax, rows: list[dict], x: np.ndarray | None, label: str = "reward_mean", band: bool = True, key: str = "reward_mean"
) -> None:
    xs = column(rows, "epoch") if x is None else np.asarray(x, dtype=float)
    mean, std = column(rows, key), column(rows, key.replace("_mean", "_std"))
    keep = np.isfinite(xs) & np.isfinite(mean)
    line = ax.plot(xs[keep], mean[keep], marker="o" if keep.sum() <= 30 else None, markersize=3, label=label)[0]
    both = keep & np.isfinite(std)
    if band and both.any():
        ax.fill_between(
            xs[both],
            (mean - std)[both],
            (mean + std)[both],
            color=line.get_color(),
            alpha=0.2,
            label=f"± {key.replace('_mean', '_std')}",
        )


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
    return [
        (key, title)
        for key, title in algorithm.diagnostics
        if any(len(xs) for xs, _ in step_series(rows, key).values())
    ]


def _source(algorithm: str | None):
    """Where the algorithm's training samples come from; the rollout actors for an unknown name."""
    from learner.algorithms import ALGORITHMS
    from learner.algorithms.base import FromRollouts

    return ALGORITHMS[algorithm].source if algorithm in ALGORITHMS else FromRollouts()


def reward_figure(rows: list[dict], name: str, trained: str, monitor: str | None):
    """Reward per epoch and vs wall-clock; a ROCM run's held-out monitor reward gets its own axes (another reward,
    unit)."""
    algorithm = _algorithm(rows)
    monitored = monitor is not None and len(series(rows, "monitor_reward_mean")[0]) > 0
    figure = _figure(16 if monitored else 11, 4)
    axes = figure.subplots(1, 3 if monitored else 2)
    by_epoch, by_time = axes[0], axes[-1]
    what = _source(algorithm).reward_label
    _reward_curve(by_epoch, rows, None)
    seconds, time_label = _time_axis(wall_clock_s(rows))
    _reward_curve(by_time, rows, seconds)
    _label(by_epoch, f"{name}: {what} per epoch", "epoch", reward_label(trained))
    _label(by_time, f"{name}: {what} vs time", time_label, reward_label(trained))
    if monitored:
        _reward_curve(axes[1], rows, None, label="monitor_reward_mean", key="monitor_reward_mean")
        _label(axes[1], f"{name}: held-out monitor", "epoch", reward_label(monitor, "monitor_reward_mean"))
    return figure


def diagnostics_figure(rows: list[dict], name: str):
    """The algorithm's diagnostics, one panel each (approx_kl and the log-prob gaps on a log scale; a dict-valued
    metric such as the per-step gap as one curve per step), or None if the rows hold none."""
    panels = diagnostic_panels(rows)
    if not panels:
        return None
    figure = _figure(5.5 * len(panels), 4)
    for ax, (key, title) in zip(np.atleast_1d(figure.subplots(1, len(panels))), panels):
        curves = step_series(rows, key)
        for label, (xs, ys) in curves.items():
            ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, markersize=3, label=label)
        ys = np.concatenate([ys for _, ys in curves.values()])
        target_xs, target_ys = series(rows, TARGETS.get(key, ""))
        if len(target_xs):
            ax.plot(target_xs, target_ys, linestyle="--", color="gray", label=TARGETS[key])
        if key in LOG_SCALE:
            ax.set_yscale("log" if (ys > 0).all() else "symlog", **({} if (ys > 0).all() else {"linthresh": 1e-9}))
        _label(ax, f"{name}: {title}", "epoch", key + (" (log scale)" if key in LOG_SCALE else ""))
    return figure


def plot_run(run_dir: Path) -> list[Path]:
    """Write `plots/reward.png` and `plots/diagnostics.png` for one run; returns their paths."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    out = run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    name = f"{run_dir.name} ({_algorithm(rows)})"
    paths = [out / "reward.png"]
    reward_figure(rows, name, *run_rewards(run_dir)).savefig(paths[0], dpi=100)
    diagnostics = diagnostics_figure(rows, name)
    if diagnostics is not None:
        paths.append(out / "diagnostics.png")
        diagnostics.savefig(paths[-1], dpi=100)
    return paths


def _run_labels(run_dirs: list[Path]) -> list[str]:
    names = [p.name for p in run_dirs]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in run_dirs]


def comparison_figure(run_dirs: list[Path]):
    """(figure, warning or None): reward vs wall-clock and vs samples_seen, one row of panels per trained reward."""
    runs = [(read_metrics(p), run_rewards(p)[0], label) for p, label in zip(run_dirs, _run_labels(run_dirs))]
    rewards = list(dict.fromkeys(reward for _, reward, _ in runs))
    longest = max(wall_clock_s(rows)[-1] for rows, _, _ in runs)
    scale, time_label = (60, "wall-clock (minutes)") if longest >= 120 else (1, "wall-clock (seconds)")
    figure = _figure(11, 4.5 * len(rewards))
    grid = np.atleast_2d(figure.subplots(len(rewards), 2))
    for (by_time, by_samples), reward in zip(grid, rewards):
        for rows, _, label in (r for r in runs if r[1] == reward):
            label = f"{label} ({_algorithm(rows)})"
            _reward_curve(by_time, rows, wall_clock_s(rows) / scale, label, band=False)
            _reward_curve(by_samples, rows, column(rows, "samples_seen"), label, band=False)
        _label(by_time, f"{reward}: reward vs wall-clock", time_label, reward_label(reward))
        _label(by_samples, f"{reward}: reward vs samples seen", "samples_seen", reward_label(reward))
    warning = None
    if len(rewards) > 1:
        warning = (
            f"the runs train different rewards ({', '.join(rewards)}): one row of panels per reward, not "
            "comparable with each other"
        )
        figure.suptitle(warning, fontsize="small", color="darkred")
    return figure, warning


def plot_runs(run_dirs: list[Path], out: Path) -> Path:
    """Overlay runs: reward_mean vs wall-clock and vs samples_seen (the time-to-reward comparison)."""
    run_dirs = [Path(p) for p in run_dirs]
    if not run_dirs:
        raise ValueError("plot_runs needs at least one run folder")
    figure, warning = comparison_figure(run_dirs)
    if warning:
        print(f"rlcm plot: warning: {warning}")
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
    parser = subparsers.add_parser(
        "plot",
        help="plot runs' metrics (each run's plots/; several runs overlaid in --out)",
        description="Redraw each run's plots/ from its metrics.jsonl; with several runs, also one figure that "
        "overlays them.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders holding metrics.jsonl")
    parser.add_argument("--out", help="overlay of all runs (default comparison.png when more than one run)")
    parser.set_defaults(func=_run)
    return parser
