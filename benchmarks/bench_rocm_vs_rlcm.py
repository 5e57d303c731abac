"""ROCM vs RLCM on the toy LCM and the differentiable smoothness reward, in one process (no Ray).

    python benchmarks/bench_rocm_vs_rlcm.py --threads 1 # 9 runs x 20 epochs (4.3 min on a shared 2-core CPU)
    python benchmarks/bench_rocm_vs_rlcm.py --quick     # 4 runs x 6 epochs

Runs, all at the `rocm-tiny-cpu` sampling (H=4 steps, guidance 8) and LoRA, the same prompts and seeds:
- RLCM: RolloutWorker + PPOLearner with the `tiny-cpu` preset's PPO, stat tracking and 16 samples per epoch,
  rewards scored on the uint8 images through `build_scorer("smoothness")` (DifferentiableScorer);
- ROCM (`rocm-tiny-cpu` settings, 4 samples with grad per epoch) with λ=0, with λ=1 for each divergence
  (kl, reverse_kl, hellinger, fisher, js; kl and reverse_kl coincide for equal stds), and kl at λ=0.1, 10.

A "sample" is one generated image that trained the policy (ROCM: one chain with grad). Seconds are
training wall-clock (RLCM: sampling + scoring + PPO), evaluation excluded. Every final policy, and the
base model, is evaluated on the same 8 prompts and noise: reward, Σ_k KL(π_θ‖π_base) per chain (one
measure for every run, whatever it was trained with) and diversity (per-pixel std across the 8 images;
collapse to one flat image drives it to 0). Outputs: docs/results/rocm_vs_rlcm.png (curves and the
reward/divergence trade-off), docs/results/rocm_vs_rlcm_samples.png (grids), docs/results/rocm.md.
"""

from __future__ import annotations

import argparse
import functools
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import torch

from learner.algorithms.rocm.learner import ROCMLearner, ROCMLearnerSpec
from learner.algorithms.rocm.objective import rocm_objective
from learner.ppo.learner import LearnerSpec, PPOLearner
from rewards_service.registry import build_differentiable_reward, build_scorer
from rlcm.config.prompts import batch_seed, epoch_prompts, load_prompts
from rlcm.config.schema import load_config
from rollout.trajectory import Trajectory
from rollout.worker import RolloutSpec, RolloutWorker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
EVAL_SEED = 1234
SMOOTHNESS = functools.partial(build_differentiable_reward, "smoothness")


@dataclass
class Run:
    name: str
    algorithm: str
    divergence: str = ""
    lam: float = 0.0
    epoch_rewards: list[float] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)  # cumulative, after each epoch
    seconds: list[float] = field(default_factory=list)  # cumulative training wall-clock
    final: dict = field(default_factory=dict)

    def record(self, rewards: np.ndarray, seconds: float) -> None:
        self.epoch_rewards.append(float(np.mean(rewards)))
        self.samples.append((self.samples[-1] if self.samples else 0) + len(rewards))
        self.seconds.append((self.seconds[-1] if self.seconds else 0.0) + seconds)


@torch.no_grad()
def evaluate(pipe, prompts: list[str], num_steps: int, guidance_scale: float) -> dict:
    """Reward, Σ_k KL to the base and diversity of one policy on fixed prompts and noise."""
    out = rocm_objective(
        pipe,
        prompts,
        num_steps,
        guidance_scale,
        torch.Generator().manual_seed(EVAL_SEED),
        SMOOTHNESS(),
        "kl",
        1.0,
        gradient_checkpointing=False,
    )
    images = out["images"]
    return {
        "reward": float(out["reward"].mean()),
        "kl_to_base": float(out["divergence"].mean()),
        "diversity": float((images.float() / 255).std(dim=0).mean()),
        "images": images.permute(0, 2, 3, 1).numpy(),
        "rewards": out["reward"].tolist(),
    }


def run_rlcm(epochs: int, prompts: list[str], eval_prompts: list[str]) -> Run:
    rlcm, rocm = load_config("tiny-cpu"), load_config("rocm-tiny-cpu")
    steps, guidance = rocm.sampling.num_steps, rocm.sampling.guidance_scale
    worker = RolloutWorker(
        RolloutSpec(model="tiny", lora=rocm.model.lora, num_steps=steps, guidance_scale=guidance, device="cpu")
    )
    learner = PPOLearner(
        LearnerSpec(
            model="tiny",
            lora=rocm.model.lora,
            ppo=rlcm.train,
            stat_buffer_size=rlcm.stat_tracking.buffer_size,
            stat_min_count=rlcm.stat_tracking.min_count,
            seed=rlcm.run.seed,
            device="cpu",
        )
    )
    scorer = build_scorer("smoothness")
    size, batches = rlcm.sampling.batch_size, rlcm.sampling.batches_per_epoch
    run = Run("RLCM (PPO)", "rlcm")
    for epoch in range(epochs):
        start = time.perf_counter()
        worker.set_adapter(learner.adapter())
        chosen = epoch_prompts(prompts, rlcm.run.seed, epoch, size * batches)
        traj = Trajectory.concat(
            [
                worker.sample(chosen[b * size : (b + 1) * size], batch_seed(rlcm.run.seed, epoch, b))
                for b in range(batches)
            ]
        )
        rewards = np.asarray(scorer.score(traj.images.permute(0, 2, 3, 1).numpy(), traj.prompts).rewards)
        learner.train(traj, learner.advantages(traj.prompts, rewards))
        run.record(rewards, time.perf_counter() - start)
    worker.set_adapter(learner.adapter())
    run.final = evaluate(worker.pipe, eval_prompts, steps, guidance)
    return run


def rocm_spec(divergence: str, lam: float) -> ROCMLearnerSpec:
    cfg = load_config("rocm-tiny-cpu")
    return ROCMLearnerSpec(
        model="tiny",
        lora=cfg.model.lora,
        rocm=cfg.rocm.model_copy(update={"divergence": divergence, "lam": lam}),
        num_steps=cfg.sampling.num_steps,
        guidance_scale=cfg.sampling.guidance_scale,
        reward_factory=SMOOTHNESS,
        seed=cfg.run.seed,
        device="cpu",
    )


def run_rocm(divergence: str, lam: float, epochs: int, prompts: list[str], eval_prompts: list[str]) -> Run:
    learner = ROCMLearner(rocm_spec(divergence, lam))
    run = Run(f"ROCM {divergence} λ={lam:g}" if lam else "ROCM λ=0", "rocm", divergence, lam)
    for epoch in range(epochs):
        start = time.perf_counter()
        learner.train(epoch_prompts(prompts, learner.spec.seed, epoch, learner.prompts_per_epoch))
        run.record(learner.last_samples.rewards, time.perf_counter() - start)
    run.final = evaluate(learner.pipe, eval_prompts, learner.spec.num_steps, learner.spec.guidance_scale)
    return run


def plot_curves(runs: list[Run], base: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for i, run in enumerate(runs):
        style = dict(
            marker=".",
            linewidth=2.2 if run.algorithm == "rlcm" else 1.3,
            color="black" if run.algorithm == "rlcm" else f"C{i}",
        )
        axes[0].plot(run.samples, run.epoch_rewards, label=run.name, **style)
        axes[1].plot(run.seconds, run.epoch_rewards, label=run.name, **style)
        point = (run.final["kl_to_base"], run.final["reward"])
        axes[2].scatter(*point, s=20 + 400 * run.final["diversity"], color=style["color"])
        axes[2].annotate(
            run.name, point, fontsize=7, color=style["color"], xytext=(6, 12 - 9 * (i % 4)), textcoords="offset points"
        )
    axes[2].scatter(0.0, base["reward"], s=20 + 400 * base["diversity"], marker="s", color="gray")
    axes[2].annotate("base", (0.0, base["reward"]), fontsize=7, xytext=(4, 2), textcoords="offset points")
    for ax, xlabel in zip(axes[:2], ("training samples (images)", "training wall-clock (s)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean smoothness reward of the epoch's samples")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[2].set_xscale("symlog", linthresh=0.01)
    axes[2].set_xlabel("Σ_k KL(π_θ ‖ π_base) per chain (eval, symlog)")
    axes[2].set_ylabel("eval reward (8 prompts, fixed noise)")
    axes[2].set_title("trade-off (marker size = diversity)", fontsize=9)
    axes[2].grid(alpha=0.3)
    fig.suptitle("toy LCM, smoothness reward: ROCM (first-order, per-step divergence) vs RLCM (PPO)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_grids(rows: list[tuple[str, dict]], prompts: list[str], path: Path) -> None:
    columns = len(prompts)
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.45 * columns, 1.6 * len(rows)), squeeze=False)
    for r, (label, result) in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            ax.imshow(result["images"][c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"{result['rewards'][c]:.3f}", fontsize=7, labelpad=1)
            if r == 0:
                ax.set_title(prompts[c][:14], fontsize=7)
        axes[r][0].set_ylabel(f"{label}\nKL {result['kl_to_base']:.3g}\ndiv {result['diversity']:.3f}", fontsize=7)
    fig.suptitle("same prompts and noise; number under each image = reward", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(runs: list[Run], base: dict, args: argparse.Namespace, total_s: float, path: Path) -> None:
    lines = [
        "# ROCM vs RLCM on the toy LCM (smoothness reward)",
        "",
        f"`{' '.join(['python benchmarks/bench_rocm_vs_rlcm.py', *sys.argv[1:]])}` "
        f"— {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} torch threads, "
        f"{args.epochs} epochs per run, total {total_s / 60:.1f} min (shared machine; seconds are indicative).",
        "",
        "Training reward = mean of the last epoch's training samples; eval = the final policy on 8 fixed prompts",
        "and noise; KL to base = Σ_k KL(π_θ‖π_base) per chain on the eval set (the same measure for every run);",
        "diversity = per-pixel std across the 8 eval images (0 = every prompt gives the same image).",
        "With equal stds kl and reverse_kl are the same penalty (identical rows); at one λ the penalties differ in",
        "scale: fisher = Δ²/σ⁴ weighs the late, small-σ steps most, hellinger and js are ≈ Δ²/(8σ²) for small Δ.",
        "",
        "| run | samples | train s | train reward (last epoch) | eval reward | KL to base | diversity |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| base model | 0 | 0 | – | {base['reward']:.4f} | 0 | {base['diversity']:.4f} |",
    ]
    for run in runs:
        f = run.final
        lines.append(
            f"| {run.name} | {run.samples[-1]} | {run.seconds[-1]:.1f} | {run.epoch_rewards[-1]:.4f} | "
            f"{f['reward']:.4f} | "
            f"{f['kl_to_base']:.4f} | {f['diversity']:.4f} |"
        )
    lines += [
        "",
        *summary_lines(runs),
        "",
        "![curves](rocm_vs_rlcm.png)",
        "",
        "![samples](rocm_vs_rlcm_samples.png)",
        "",
    ]
    path.write_text("\n".join(lines))


def summary_lines(runs: list[Run]) -> list[str]:
    """Two read-offs from the table: cost to match RLCM's final reward, and the λ sweep of the kl runs."""
    rlcm = next(run for run in runs if run.algorithm == "rlcm")
    target = rlcm.epoch_rewards[-1]
    lines = [
        f"Cost to reach RLCM's last-epoch training reward ({target:.4f}; RLCM: {rlcm.samples[-1]} samples, "
        f"{rlcm.seconds[-1]:.0f} s):",
        "",
    ]
    for run in (run for run in runs if run is not rlcm):
        hit = next((i for i, r in enumerate(run.epoch_rewards) if r >= target), None)
        reached = f"{run.samples[hit]} samples, {run.seconds[hit]:.1f} s" if hit is not None else "not reached"
        lines.append(f"- {run.name}: {reached}")
    sweep = sorted(
        ((run.lam, run.final) for run in runs if run.algorithm == "rocm" and (run.divergence == "kl" or run.lam == 0)),
        key=lambda item: item[0],
    )
    lines += [
        "",
        "kl λ sweep (eval): "
        + "; ".join(
            f"λ={lam:g}: KL {f['kl_to_base']:.3g}, diversity {f['diversity']:.3f}, reward {f['reward']:.3f}"
            for lam, f in sweep
        ),
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default 20, --quick 6)")
    parser.add_argument("--quick", action="store_true", help="RLCM, ROCM λ=0, kl λ=1 and kl λ=10 only, 6 epochs")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.epochs = args.epochs or (6 if args.quick else 20)
    torch.set_num_threads(args.threads)
    cfg = load_config("rocm-tiny-cpu")
    prompts = load_prompts(cfg.prompts.source, cfg.prompts.limit)
    eval_prompts = prompts[:8]
    settings = [("none", 0.0), ("kl", 1.0), ("kl", 10.0)]
    if not args.quick:
        settings += [("kl", 0.1), ("reverse_kl", 1.0), ("hellinger", 1.0), ("fisher", 1.0), ("js", 1.0)]
    start = time.perf_counter()
    base = evaluate(
        ROCMLearner(rocm_spec("kl", 0.0)).pipe, eval_prompts, cfg.sampling.num_steps, cfg.sampling.guidance_scale
    )
    runs = [run_rlcm(args.epochs, prompts, eval_prompts)]
    print(
        f"{runs[-1].name}: reward {runs[-1].epoch_rewards[0]:.4f} -> {runs[-1].epoch_rewards[-1]:.4f}, "
        f"{runs[-1].seconds[-1]:.0f} s",
        flush=True,
    )
    for divergence, lam in settings:
        runs.append(run_rocm(divergence, lam, args.epochs, prompts, eval_prompts))
        print(
            f"{runs[-1].name}: reward {runs[-1].epoch_rewards[0]:.4f} -> {runs[-1].epoch_rewards[-1]:.4f}, "
            f"KL {runs[-1].final['kl_to_base']:.4f}, {runs[-1].seconds[-1]:.0f} s",
            flush=True,
        )
    total = time.perf_counter() - start
    args.out_dir.mkdir(parents=True, exist_ok=True)
    plot_curves(runs, base, args.out_dir / "rocm_vs_rlcm.png")
    by_name = {run.name: run.final for run in runs}
    grid_rows = [
        ("base", base),
        ("ROCM λ=0", by_name["ROCM λ=0"]),
        ("ROCM kl λ=1", by_name["ROCM kl λ=1"]),
        ("ROCM kl λ=10", by_name["ROCM kl λ=10"]),
        ("RLCM", by_name["RLCM (PPO)"]),
    ]
    plot_grids(grid_rows, eval_prompts, args.out_dir / "rocm_vs_rlcm_samples.png")
    write_results(runs, base, args, total, args.out_dir / "rocm.md")
    print(f"wrote {args.out_dir}/rocm.md, rocm_vs_rlcm.png, rocm_vs_rlcm_samples.png in {total / 60:.1f} min")


if __name__ == "__main__":
    main()
