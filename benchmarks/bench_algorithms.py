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
the policy; first-order methods: a chain sampled with grad), labels given (a reward per sample; D3PO: a preference per
pair) and training seconds (sampling, scoring and update).
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

import numpy as np
import torch
from algorithms_report import EVAL_NOISES, EVAL_PROMPTS, TASKS, final_reward, headline, plot, table, write_results

from cluster.run_actors import learner_spec, rollout_spec
from cluster.schedule import epoch_jobs
from cluster.sign_test import learner_rewards, load_adapter
from learner.actor import build_learner
from learner.algorithms import ALGORITHMS
from learner.algorithms.rocm.lam_controller import controller_for
from learner.policy_measures import kl_to_base, pairwise_diversity
from rewards_service.registry import build_scorer
from rlcm.config.prompts import epoch_prompts, holdout_split, load_prompts
from rlcm.config.schema import TrainConfig, load_config, toy_presets
from rollout.worker import RolloutSpec, RolloutWorker

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
EVAL_SEED = 1234


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
        worker = self.worker(rollout_spec(config, noise_group_size=1))
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
    learner = build_learner(learner_spec(config, seed))
    prompts = load_prompts(config.prompts.source, config.prompts.limit)
    if not algo.source.learners_sample:
        worker = evaluate.worker(rollout_spec(config))
        scorer = evaluate.scorers[task]
    else:
        train_prompts = holdout_split(prompts, min_held=s.batch_size)[0]
        lam = controller_for(config.settings) if hasattr(config.settings, "lam") else None
    setup_s, rewards, samples, seconds, last = time.perf_counter() - setup_start, [], [0], [0.0], 0.0
    labels = [0]  # rewards the learner was given (D3PO: preferences)
    while seconds[-1] + last / 2 <= budget_s or not rewards:  # stop at the epoch end nearest the budget
        start, epoch = time.perf_counter(), len(rewards)
        if not algo.source.learners_sample:
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
            labels.append(labels[-1] + int(metrics.get("preferences_used", valid.sum())))
        else:
            chosen = epoch_prompts(train_prompts, seed, epoch, algo.prompts_per_epoch(config))
            metrics = learner.train_epoch(chosen, *(() if lam is None else (lam.lam,)))
            if lam is not None:
                lam.step(metrics["divergence_mean"])
            rewards.append(metrics["reward_mean"])
            samples.append(samples[-1] + algo.prompts_per_epoch(config))
            labels.append(labels[-1] + algo.prompts_per_epoch(config))
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
        "labels": labels[1:],
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
    presets = toy_presets()
    missing = [name for name in ALGORITHMS if name not in presets]
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
