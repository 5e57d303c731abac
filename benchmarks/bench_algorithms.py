"""Every registered algorithm on the toy, on equal wall-clock budgets, on the same rewards.

    python benchmarks/bench_algorithms.py                          # 3 seeds, 45 s per run
    python benchmarks/bench_algorithms.py --budget-s 10 --seeds 1  # smoke run
    python benchmarks/bench_algorithms.py --report-only docs/results/algorithms_runs.json

Driven from the registry: every name in `learner.algorithms.ALGORITHMS` whose toy preset (a
`rlcm/config/presets/*tiny-cpu.yaml` whose `algorithm` is that name; RLCM's is `tiny-cpu`) exists is run. Two tasks:
- `jpeg`: JPEG compressibility, for the algorithms that learn from rollouts (a black-box reward);
- `smoothness`: the differentiable smoothness reward (−total variation), for every algorithm.
Each (task, algorithm, seed) run has the preset's settings (sampler, batch sizes, step sizes), `run.seed` = the seed
and `reward.name` = the task's reward, and trains for `--budget-s` seconds with the driver's sync epoch loop in
this process: the algorithm's learner (built from its spec, as the learner actors build it), a rollout worker and
the task's scorer (rollout algorithms), one torch thread, no Ray (a Trainer's actor start-up would cost more than
a run). Runs are interleaved (seed by seed, the algorithm order rotated per seed) so drift in the machine's load
hits every algorithm alike.

Every rollout algorithm also runs a random-reward control per (task, seed): the same run with the learner seeing a
random number per sample, independent of the image (`cluster.sign_test`); the table reports each algorithm's eval
gain over its control (what it learned from its reward, not a drift any reward would produce), ± its standard error
over seeds (benchmarks/bench_sign_test.py is the full sign test).

Per epoch: the mean reward of the epoch's training samples, samples seen (an image that trained
the policy; first-order methods: a chain sampled with grad) and training seconds (sampling, scoring and update).
After the budget, the final adapter is evaluated with the preset's sampler on fixed prompts and noise
(4 prompts × 4 noises): both rewards, Σ_k KL(π_θ‖π_base) per chain and diversity (`learner.policy_measures`),
beside the base model.
Outputs: docs/results/algorithms.md, docs/results/algorithms.png, docs/results/algorithms_runs.json (raw).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import matplotlib
import numpy as np
import torch

from cluster.schedule import epoch_jobs
from cluster.sign_test import gain, learner_rewards
from learner.actor import build_learner
from learner.algorithms import ALGORITHMS
from learner.lam_controller import controller_for
from learner.policy_measures import kl_to_base, pairwise_diversity
from rewards_service.registry import build_scorer
from rlcm.config.prompts import epoch_prompts, holdout_split, load_prompts
from rlcm.config.schema import PRESETS, TrainConfig, load_config
from rollout.lora import import_adapter
from rollout.precision import DTYPES
from rollout.worker import RolloutSpec, RolloutWorker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
TASKS = {"jpeg": "jpeg_compressibility", "smoothness": "smoothness"}
EVAL_PROMPTS, EVAL_NOISES, EVAL_SEED = 4, 4, 1234
FINAL_EPOCHS = 3  # "final training reward" = mean of the last 3 epochs (one epoch is 4–16 samples: noisy)


def toy_presets() -> tuple[dict[str, str], list[str]]:
    """algorithm name -> its toy preset, and the registered algorithms that have none."""
    found = {}
    for preset in (p for p in PRESETS if p.endswith("tiny-cpu")):
        found.setdefault(load_config(preset).algorithm, preset)
    return {name: found[name] for name in ALGORITHMS if name in found}, [
        name for name in ALGORITHMS if name not in found
    ]


def cases(presets: dict[str, str]) -> list[tuple[str, str, str]]:
    """(task, algorithm, reward mode) triples: jpeg for the rollout learners, smoothness for all; the rollout learners
    also with the random control (mode `random`) of each task."""
    black_box = [name for name in presets if not ALGORITHMS[name].differentiable_reward()]
    plan = [("jpeg", name) for name in black_box] + [("smoothness", name) for name in presets]
    return [(task, name, "r") for task, name in plan] + [
        (task, name, "random") for task, name in plan if name in black_box
    ]


def run_config(preset: str, task: str, seed: int) -> TrainConfig:
    return load_config(preset, [f"run.seed={seed}", f"reward.name={TASKS[task]}"])


def rollout_spec(config: TrainConfig, noise_group_size: int = 1) -> RolloutSpec:
    """The sampler of the run's rollout actors, as `cluster.run_actors.rollout_pool` builds it."""
    s = config.sampling
    return RolloutSpec(
        model=config.model.name,
        lora=config.model.lora,
        num_steps=s.num_steps,
        guidance_scale=s.guidance_scale,
        height=s.height,
        width=s.width,
        original_inference_steps=s.original_inference_steps,
        model_seed=config.model.seed,
        dtype=DTYPES[config.model.dtype],
        noise_group_size=noise_group_size,
        eta=config.algo.eta(config),
    )


def load_adapter(worker: RolloutWorker, adapter) -> None:
    """Give a (shared) rollout worker this adapter even if it held another run's adapter of the same version."""
    import_adapter(worker.pipe.unet, adapter)
    worker.version = adapter.version


class Evaluator:
    """Final policies (and the base) on fixed prompts and noise: both rewards, Σ_k KL to the base, diversity.

    Holds one rollout worker per sampler, shared with the runs (building a pipeline per run is slow on a busy CPU).
    """

    def __init__(self):
        self.workers: dict[str, RolloutWorker] = {}
        self.scorers = {task: build_scorer(reward) for task, reward in TASKS.items()}

    def worker(self, spec: RolloutSpec) -> RolloutWorker:
        if repr(spec) not in self.workers:
            self.workers[repr(spec)] = RolloutWorker(spec)
        return self.workers[repr(spec)]

    def __call__(self, config: TrainConfig, adapter=None) -> dict:
        worker = self.worker(rollout_spec(config))
        prompts = load_prompts(config.prompts.source, config.prompts.limit)[:EVAL_PROMPTS]
        batch = [p for p in prompts for _ in range(EVAL_NOISES)]
        unet = worker.pipe.unet
        if adapter is None:
            unet.disable_adapters()
        else:
            load_adapter(worker, adapter)
        try:
            trajectory = worker.sample(batch, EVAL_SEED)
            kl = kl_to_base(worker.pipe, trajectory) if adapter is not None else torch.zeros(len(batch))
        finally:
            unet.enable_adapters()
        images = trajectory.images.permute(0, 2, 3, 1).numpy()
        result = {
            f"eval_{task}": float(np.mean(scorer.score(images, batch).rewards)) for task, scorer in self.scorers.items()
        }
        result["kl_to_base"] = float(kl.mean())
        result["diversity"] = pairwise_diversity(trajectory.images, EVAL_NOISES)
        return result


def train_one(
    task: str, name: str, preset: str, seed: int, budget_s: float, evaluate: Evaluator, mode: str = "r"
) -> dict:
    """One run on the algorithm's own sample source for `budget_s` seconds; its curve and the evaluation of its final
    adapter.

    The epoch loop of `cluster.trainer.Trainer` in sync mode, in this process: `rollouts` algorithms train on the
    epoch's rollout batches (`epoch_jobs`: prompts, groups and noise seeds as the scheduler picks them) scored by the
    task's reward (the learner sees `mode`'s reward: r, or the random control); `learners` algorithms sample their own
    chains from the training prompts (λ by the driver's controller). Another epoch starts while ending after it (if it
    lasts as long as the last one) is nearer the budget than stopping now.
    """
    setup_start, config = time.perf_counter(), run_config(preset, task, seed)
    algo, s = config.algo, config.sampling
    common = dict(
        model=config.model.name,
        lora=config.model.lora,
        seed=seed,
        model_seed=config.model.seed,
        dtype=DTYPES[config.model.dtype],
    )
    learner = build_learner(algo.learner_spec(config, common))
    prompts = load_prompts(config.prompts.source, config.prompts.limit)
    if algo.samples_from == "rollouts":
        worker = evaluate.worker(rollout_spec(config, algo.noise_group_size(config)))
        scorer = evaluate.scorers[task]
    else:
        train_prompts = holdout_split(prompts, min_held=s.batch_size)[0]
        lam = controller_for(config.settings) if hasattr(config.settings, "lam") else None
    setup_s, rewards, samples, seconds, last = time.perf_counter() - setup_start, [], [0], [0.0], 0.0
    while seconds[-1] + last / 2 <= budget_s or not rewards:  # stop at the epoch end nearest the budget
        start, epoch = time.perf_counter(), len(rewards)
        if algo.samples_from == "rollouts":
            load_adapter(worker, learner.adapter())
            jobs = epoch_jobs(
                prompts, seed, epoch, s.batch_size, config.batches_per_update, group_size=algo.group_size(config)
            )
            trajectories = [worker.sample(job.prompts, job.seed) for job in jobs]
            scores = [scorer.score(t.images.permute(0, 2, 3, 1).numpy(), t.prompts) for t in trajectories]
            reward, valid = np.concatenate([r.rewards for r in scores]), np.concatenate([r.valid for r in scores])
            seen = np.where(valid, learner_rewards(mode, np.where(valid, reward, 0.0), seed, epoch), np.nan)
            metrics = learner.train_epoch(seen, valid, *trajectories)
            rewards.append(float(reward[valid].mean()))
            samples.append(samples[-1] + int(metrics.get("samples_trained", valid.sum())))
        else:
            chosen = epoch_prompts(train_prompts, seed, epoch, algo.prompts_per_epoch(config))
            metrics = learner.train_epoch(chosen, *(() if lam is None else (lam.lam,)))
            if lam is not None:
                lam.step(metrics["reward_mean"], metrics["divergence_mean"])
            rewards.append(metrics["reward_mean"])
            samples.append(samples[-1] + algo.prompts_per_epoch(config))
        last = time.perf_counter() - start
        seconds.append(seconds[-1] + last)
    eval_start = time.perf_counter()
    run = {
        "task": task,
        "algorithm": name,
        "mode": mode,
        "preset": preset,
        "seed": seed,
        "model": config.model.name,
        "rewards": rewards,
        "samples": samples[1:],
        "seconds": seconds[1:],
        **evaluate(config, learner.adapter()),
        "setup_s": setup_s,
        "eval_s": time.perf_counter() - eval_start,
    }
    print(
        f"{task:10s} {name:10s} {mode:6s} seed {seed}: {len(rewards)} epochs, {samples[-1]} samples, "
        f"{seconds[-1]:.1f} s, "
        f"reward {rewards[0]:.4f} -> {final_reward(run):.4f}, eval {run[f'eval_{task}']:.4f}, KL "
        f"{run['kl_to_base']:.4g}, "
        f"diversity {run['diversity']:.4f} (setup {setup_s:.0f} s, eval {run['eval_s']:.0f} s)",
        flush=True,
    )
    return run


def run_all(args: argparse.Namespace) -> dict:
    presets, missing = toy_presets()
    if args.algorithms:
        unknown = sorted(set(args.algorithms) - set(presets))
        if unknown:
            raise SystemExit(
                f"--algorithms: {', '.join(unknown)} not registered with a toy preset; choose from {', '.join(presets)}"
            )
        presets = {name: preset for name, preset in presets.items() if name in args.algorithms}
    plan = cases(presets)
    evaluate = Evaluator()
    base = {}
    for task, name, _ in plan:  # the base model per sampler: the untuned row of the comparisons run with it
        config = run_config(presets[name], task, 0)
        key = (config.model.name, config.sampling.num_steps, config.sampling.guidance_scale)
        if key not in base:
            base[key] = {
                "model": config.model.name,
                "num_steps": config.sampling.num_steps,
                "tasks": [],
                "algorithms": [],
                **evaluate(config),
            }
        base[key]["tasks"] += [task] if task not in base[key]["tasks"] else []
        base[key]["algorithms"] += [name] if name not in base[key]["algorithms"] else []
    runs, start = [], time.perf_counter()
    for i, seed in enumerate(range(args.seeds)):
        shift = i * max(1, len(plan) // args.seeds) % len(plan)
        for task, name, mode in plan[shift:] + plan[:shift]:
            runs.append(train_one(task, name, presets[name], seed, args.budget_s, evaluate, mode))
    return {
        "budget_s": args.budget_s,
        "seeds": args.seeds,
        "total_s": time.perf_counter() - start,
        "missing_presets": missing,
        "threads": args.threads,
        "command": " ".join(["python benchmarks/bench_algorithms.py", *sys.argv[1:]]),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "base": list(base.values()),
        "runs": runs,
    }


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
        "eval smoothness | eval gain over random control | Σ_k KL to base | diversity |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for base in results["base"]:
        lines.append(
            f"| {', '.join(base['tasks'])} | base ({base['model']}, {base['num_steps']} steps: "
            f"{', '.join(base['algorithms'])}) | – | 0 | 0 | – | "
            f"– | {base['eval_jpeg']:.4f} | "
            f"{base['eval_smoothness']:.4f} | – | 0 | {base['diversity']:.4f} |"
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
        "only).",
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget-s", type=float, default=45.0, help="training seconds per run (default 45)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--algorithms", nargs="+", help="only these registered algorithms (default: all with a toy preset)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (more than the free cores slows torch many-fold)"
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument(
        "--report-only", type=Path, help="rebuild the report and plot from a saved algorithms_runs.json"
    )
    args = parser.parse_args()
    if args.budget_s <= 0 or args.seeds < 1:
        parser.error("--budget-s must be > 0 and --seeds >= 1")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    if args.report_only:
        results = json.loads(args.report_only.read_text())
    else:
        results = run_all(args)
        (args.out_dir / "algorithms_runs.json").write_text(json.dumps(results, indent=1))
    plot(results, args.out_dir / "algorithms.png")
    write_results(results, args.out_dir / "algorithms.md", "algorithms.png")
    print("\n".join(table(results) + [""] + headline(results)))
    print(f"wrote {args.out_dir}/algorithms.md, algorithms.png, algorithms_runs.json")


if __name__ == "__main__":
    main()
