"""The report of benchmarks/bench_algorithms.py: aggregation over seeds, the tables, the plot, algorithms.md.

`TASKS`, the evaluation's size and `FINAL_EPOCHS` are the benchmark's settings, here because the report states them.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

from cluster.sign_test import gain
from learner.algorithms import ALGORITHMS

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TASKS = {"jpeg": "jpeg_compressibility", "smoothness": "smoothness"}
EVAL_PROMPTS, EVAL_NOISES = 4, 4
FINAL_EPOCHS = 3  # "final training reward" = mean of the last 3 epochs (one epoch is 4–16 samples: noisy)


# ---- aggregation ------------------------------------------------------------------------------------------
def group_runs(results: dict, mode: str = "r") -> dict[tuple[str, str], list[dict]]:
    """(task, algorithm) -> its runs with the learner seeing `mode`'s reward (r: the task's; random: the control)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in results["runs"]:
        if run.get("mode", "r") == mode:
            groups.setdefault((run["task"], run["algorithm"]), []).append(run)
    return groups


def gain_over_control(runs: list[dict], controls: list[dict], task: str) -> str:
    """Eval reward of the runs minus that of their random-reward controls, ± SE over seeds."""
    if len(runs) < 2 or len(controls) < 2:
        return (
            "–"
            if not controls
            else f"{np.mean([r[f'eval_{task}'] for r in runs]) - np.mean([r[f'eval_{task}'] for r in controls]):+.4f}"
        )
    g = gain([r[f"eval_{task}"] for r in runs], [r[f"eval_{task}"] for r in controls])
    return f"{g.delta:+.4f} ± {g.se:.4f} ({g.z:+.1f} SE)"


def mean_curve(runs: list[dict], x_key: str, points: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seed-mean and std of the reward against the training spent before the epoch's samples were drawn (samples or
    seconds; the first epoch, the initial policy, at 0), on a common grid (linear interpolation, each seed held at its
    last epoch's reward beyond it)."""
    curves = [
        (np.concatenate([[0.0], np.asarray(r[x_key][:-1], float)]), np.asarray(r["rewards"], float))
        for r in runs
        if r["rewards"]
    ]
    if not curves:
        return np.array([]), np.array([]), np.array([])
    high = max(x[-1] for x, _ in curves)
    grid = np.linspace(0.0, high, points) if high > 0 else np.array([0.0])
    values = np.stack([np.interp(grid, x, y) for x, y in curves])
    return grid, values.mean(axis=0), values.std(axis=0)


def final_reward(run: dict) -> float:
    return float(np.mean(run["rewards"][-FINAL_EPOCHS:])) if run["rewards"] else float("nan")


def gain_per_100_labels(run: dict) -> float:
    """Training reward gain (final − first epoch) per 100 labels given: rewards, or D3PO's preferences."""
    labels = run.get("labels") or [0]
    return 100 * (final_reward(run) - run["rewards"][0]) / labels[-1] if labels[-1] else float("nan")


def time_to_reach(run: dict, target: float) -> float | None:
    """Training seconds until the reward, averaged over the last (up to) `FINAL_EPOCHS` epochs, first reaches
    `target`."""
    rewards = np.asarray(run["rewards"], float)
    for end in range(1, len(rewards) + 1):
        if rewards[max(0, end - FINAL_EPOCHS) : end].mean() >= target:
            return run["seconds"][end - 1]
    return None


def headline(results: dict) -> list[str]:
    """The RLCM paper's comparison in small: RLCM's time to reach DDPO's final JPEG reward."""
    groups = group_runs(results)
    if ("jpeg", "ddpo") not in groups:
        return [
            "DDPO is not in `learner.algorithms.ALGORITHMS` with a `ddpo-tiny-cpu` preset on this checkout, so RLCM's "
            "time "
            "to reach DDPO's final reward is not measured."
        ]
    if ("jpeg", "rlcm") not in groups:
        return ["RLCM has no JPEG runs: no time-to-reach figure."]
    ddpo, rlcm = groups[("jpeg", "ddpo")], groups[("jpeg", "rlcm")]
    target = float(np.mean([final_reward(r) for r in ddpo]))
    gain = float(np.mean([final_reward(r) - r["rewards"][0] for r in ddpo if r["rewards"]]))
    start = float(np.mean([r["rewards"][0] for r in rlcm if r["rewards"]]))
    ddpo_s = float(np.mean([r["seconds"][-1] for r in ddpo if r["seconds"]]))
    lines = [
        f"DDPO's final JPEG reward (mean of its last (up to) {FINAL_EPOCHS} epochs, {len(ddpo)} seed(s), {ddpo_s:.1f} "
        "s of training on average): "
        f"{target:.4f} (a gain of {gain:+.4f} over its first epoch)."
    ]
    for label, level, per in (
        ("the same reward", target, lambda r: target),
        ("the same gain over its first epoch", start + gain, lambda r: r["rewards"][0] + gain),
    ):
        times = [time_to_reach(r, per(r)) for r in rlcm if r["rewards"]]
        reached = [t for t in times if t is not None]
        text = ", ".join("not reached" if t is None else f"{t:.1f} s" for t in times)
        mean = f"; mean over the seeds that reached it {np.mean(reached):.1f} s" if reached else ""
        lines.append(f"- RLCM to reach {label} ({level:.4f}): {text} (per seed){mean}, against DDPO's {ddpo_s:.1f} s.")
    return lines


# ---- report -----------------------------------------------------------------------------------------------
def fmt(values: list[float], spec: str = ".4f") -> str:
    values = [v for v in values if np.isfinite(v)]
    if not values:
        return "–"
    return f"{np.mean(values):{spec}} ± {np.std(values):{spec}}" if len(values) > 1 else f"{values[0]:{spec}}"


def table(results: dict) -> list[str]:
    lines = [
        "| task | algorithm | preset | epochs | samples | train s | train reward, first epoch → final | eval jpeg | "
        "eval smoothness | eval gain over random control | train reward gain per 100 labels | Σ_k KL to base | "
        "diversity |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for base in results["base"]:
        lines.append(
            f"| {', '.join(base['tasks'])} | base ({base['model']}, {base['num_steps']} steps: "
            f"{', '.join(base['algorithms'])}) | – | 0 | 0 | – | "
            f"– | {base['eval_jpeg']:.4f} | "
            f"{base['eval_smoothness']:.4f} | – | – | 0 | {base['diversity']:.4f} |"
        )
    controls = group_runs(results, "random")
    for (task, name), runs in group_runs(results).items():
        first = fmt([r["rewards"][0] for r in runs if r["rewards"]])
        lines.append(
            f"| {task} | {name} | {runs[0]['preset']} | {fmt([len(r['rewards']) for r in runs], '.1f')} | "
            f"{fmt([r['samples'][-1] for r in runs if r['samples']], '.0f')} | "
            f"{fmt([r['seconds'][-1] for r in runs if r['seconds']], '.1f')} | "
            f"{first} → {fmt([final_reward(r) for r in runs])} | "
            f"{fmt([r['eval_jpeg'] for r in runs])} | {fmt([r['eval_smoothness'] for r in runs])} | "
            f"{gain_over_control(runs, controls.get((task, name), []), task)} | "
            f"{fmt([gain_per_100_labels(r) for r in runs])} | "
            f"{fmt([r['kl_to_base'] for r in runs], '.4g')} | {fmt([r['diversity'] for r in runs])} |"
        )
    return lines


def plot(results: dict, path: Path) -> None:
    groups = group_runs(results)
    tasks = [t for t in TASKS if any(task == t for task, _ in groups)]
    colors = {name: f"C{i}" for i, name in enumerate(ALGORITHMS)}
    fig, axes = plt.subplots(len(tasks), 3, figsize=(17, 4.6 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks):
        for (t, name), runs in groups.items():
            if t != task:
                continue
            for ax, x_key in zip(row[:2], ("samples", "seconds")):
                grid, mean, std = mean_curve(runs, x_key)
                ax.plot(grid, mean, color=colors.get(name), label=name, marker="o" if len(grid) == 1 else None)
                ax.fill_between(grid, mean - std, mean + std, color=colors.get(name), alpha=0.2)
            kl, reward = [r["kl_to_base"] for r in runs], [r[f"eval_{task}"] for r in runs]
            row[2].errorbar(
                np.mean(kl),
                np.mean(reward),
                xerr=np.std(kl),
                yerr=np.std(reward),
                fmt="o",
                color=colors.get(name),
                markersize=4 + 60 * np.mean([r["diversity"] for r in runs]),
                label=name,
            )
        for base in results["base"]:
            if task in base["tasks"]:
                row[2].scatter(0, base[f"eval_{task}"], marker="s", color="gray")
                row[2].annotate(
                    f"base {base['model']} ({base['num_steps']} steps)",
                    (0, base[f"eval_{task}"]),
                    fontsize=7,
                    xytext=(4, 2),
                    textcoords="offset points",
                )
        for ax, xlabel in zip(
            row[:2], ("training samples before the epoch", "training wall-clock before the epoch (s)")
        ):
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{TASKS[task]} reward of the epoch's samples")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        row[2].set_xscale("symlog", linthresh=0.01)
        row[2].set_xlabel("Σ_k KL(π_θ ‖ π_base) per chain (eval, symlog)")
        row[2].set_ylabel(f"eval {TASKS[task]} reward")
        row[2].set_title("final policies (marker size = diversity)", fontsize=9)
        row[2].grid(alpha=0.3)
    fig.suptitle(
        f"toy models, {results['seeds']} seed(s), {results['budget_s']:g} s of training per run: mean ± std over seeds"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_results(results: dict, path: Path, figure: str) -> None:
    missing = results["missing_presets"]
    lines = [
        "# Every algorithm on the toy, equal wall-clock budgets",
        "",
        f"`{results['command']}` — {results['machine']}, torch {results['torch']}, CPU, 2 cores, shared with other "
        "jobs; "
        f"{results['seeds']} seed(s), {results['budget_s']:g} s of training per run, the runs and their evaluations "
        f"{results['total_s'] / 60:.1f} min in all (seconds are indicative).",
        "",
        "Each run trains the algorithm's learner with its toy preset (its own sampler, batch sizes and step sizes), "
        "the task's",
        "reward and `run.seed`, in the driver's sync epoch loop in one process (one torch thread, no Ray), until the "
        "epoch end",
        "nearest the budget. Train reward: the mean reward of an epoch's training samples (first epoch → mean of the "
        "last",
        f"{FINAL_EPOCHS}); samples: images that trained the policy (first-order methods: chains sampled with grad); "
        "train s: the",
        f"training seconds used. Eval: the final policy on {EVAL_PROMPTS} prompts × {EVAL_NOISES} noises, the same "
        "for every run of",
        "a sampler. Eval gain over random control: the run's eval reward of its task minus that of the same "
        "algorithm, seeds and",
        "budget trained on a random number per sample (independent of the image), ± SE over seeds (rollout algorithms "
        "only). Train reward gain per 100 labels: (final − first epoch) train reward per 100 labels the learner was "
        "given (a reward per sample; D3PO: a preference per pair, so D3PO's figure is per 100 preferences beside the "
        "others' per 100 rewards).",
        "Σ_k KL(π_θ‖π_base) per chain at the states the policy visits (`learner.policy_measures`); diversity =",
        "mean pairwise RMS pixel distance between the images of one prompt. Mean ± std over seeds. Σ_k KL compares "
        "runs",
        "of one sampler: the LCM chains (4 or 8 steps) and the DDIM chain (8 actions, the last ones with a tiny σ_t) "
        "are",
        "different policies, and the toy DDIM model (`tiny-ddim`) starts from other rewards than the toy LCM (`tiny`).",
        "Plot: each epoch's reward against the training spent before its samples were drawn (the first epoch, the",
        "initial policy, at 0); a seed's curve is held at its last epoch beyond it.",
        "",
        *table(results),
        "",
        "## RLCM vs DDPO, in small",
        "",
        "The RLCM paper's headline (time to reach DDPO's reward) on the toys. The two toys start from different JPEG",
        "rewards, so the absolute target is met by RLCM's first epoch; the gain over each run's first epoch (its",
        "initial policy) is the comparison that means something. Reached = the mean of the last (up to) "
        f"{FINAL_EPOCHS} epochs",
        "is at the target; the time includes the epoch that reached it.",
        "",
        *headline(results),
        "",
    ]
    if missing:
        lines += [f"Registered but without a toy preset (not run): {', '.join(missing)}.", ""]
    lines += [f"![algorithms]({figure})", ""]
    path.write_text("\n".join(lines))
