"""ROCM's λ on the toy: a sweep of fixed λ for every divergence, with `lam: auto` (the paper's rule) beside it.

    python benchmarks/bench_lambda.py             # 4 divergences x (4 fixed λ + auto) + λ=0, 10 epochs each
    python benchmarks/bench_lambda.py --quick     # kl only, 6 epochs

Every run uses the `rocm-tiny-cpu` settings (toy LCM, 4 steps, 4 chains with grad per epoch, smoothness reward),
the same prompts and seeds; only the divergence and λ change. Each final policy is evaluated on the same 8
held-out prompts and noise (as benchmarks/bench_rocm_vs_rlcm.py): the trained reward (smoothness), and the
off-target measures JPEG size (kB, quality 95), diversity (per-pixel std across the 8 images) and Σ_k KL to the
base per chain. `auto` runs (docs/rocm_lambda.md) start at λ = 0.1 and steer mean Σ_k D_k per chain to lam_target 0.1
(at most ×/÷1.5 per epoch); they are plotted at their mean λ.
Outputs: docs/results/lambda_sweep.png (Fig. 4-shaped: each measure against λ), docs/results/lambda.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import matplotlib
import numpy as np
import torch
from bench_rocm_vs_rlcm import evaluate, rocm_spec

from learner.algorithms.rocm.lam_controller import LamController
from learner.algorithms.rocm.learner import ROCMLearner
from rewards_service.scorers.jpeg import jpeg_size_kb
from rlcm.config.prompts import epoch_prompts, load_prompts

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
MEASURES = (
    ("reward", "trained reward (smoothness) ↑"),
    ("jpeg_kb", "JPEG size, kB ↓ (off-target)"),
    ("diversity", "diversity ↑ (off-target)"),
    ("kl_to_base", "Σ_k KL to the base"),
)


def run(divergence: str, lam: float | str, epochs: int, prompts: list[str], eval_prompts: list[str]) -> dict:
    learner = ROCMLearner(rocm_spec(divergence, 0.0 if lam == "auto" else lam))
    controller = LamController(0.1 if lam == "auto" else float(lam), target=0.1, max_factor=1.5, fixed=lam != "auto")
    lams, divergences, start = [], [], time.perf_counter()
    for epoch in range(epochs):
        lams.append(controller.lam)
        metrics = learner.train(
            epoch_prompts(prompts, learner.spec.seed, epoch, learner.prompts_per_epoch), controller.lam
        )
        controller.step(metrics["divergence_mean"])
        divergences.append(metrics["divergence_mean"])
    seconds = time.perf_counter() - start
    final = evaluate(learner.pipe, eval_prompts, learner.spec.num_steps, learner.spec.guidance_scale)
    return {
        "divergence": divergence,
        "setting": str(lam),
        "lam": float(np.mean(lams)),
        "lams": lams,
        "divergences": divergences,
        "seconds": seconds,
        "reward": final["reward"],
        "kl_to_base": final["kl_to_base"],
        "diversity": final["diversity"],
        "jpeg_kb": float(np.mean([jpeg_size_kb(image) for image in final["images"]])),
    }


def plot(results: list[dict], base: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(5 * len(MEASURES), 4.2))
    divergences = sorted({r["divergence"] for r in results if r["setting"] != "0.0"})
    for ax, (key, title) in zip(axes, MEASURES):
        for i, divergence in enumerate(divergences):
            fixed = sorted(
                (r["lam"], r[key])
                for r in results
                if r["divergence"] == divergence and r["setting"] not in ("auto", "0.0")
            )
            ax.plot(*zip(*fixed), marker="o", color=f"C{i}", label=f"{divergence} (fixed λ)")
            for r in results:
                if r["divergence"] == divergence and r["setting"] == "auto":
                    ax.plot(
                        r["lam"],
                        r[key],
                        marker="*",
                        markersize=14,
                        color=f"C{i}",
                        linestyle="none",
                        label=f"{divergence} auto (mean λ)",
                    )
        ax.axhline(base[key], color="gray", linestyle="--", label="base model")
        zero = [r for r in results if r["setting"] == "0.0"]
        if zero:
            ax.axhline(zero[0][key], color="black", linestyle=":", label="λ = 0")
        ax.set_xscale("log")
        ax.set_xlabel("λ")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="x-small")
    fig.suptitle("ROCM on the toy: trained reward and off-target measures against λ (CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default 10, --quick 6)")
    parser.add_argument("--quick", action="store_true", help="kl only, 6 epochs")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    epochs = args.epochs or (6 if args.quick else 10)
    prompts = load_prompts("imagenet_animals", 10)
    eval_prompts = load_prompts("imagenet_animals")[10:18]
    divergences = ("kl",) if args.quick else ("kl", "hellinger", "fisher", "js")
    sweep = (0.01, 0.1, 1.0, 10.0)
    base = evaluate(ROCMLearner(rocm_spec("kl", 0.0)).pipe, eval_prompts, 4, 8.0)
    base["jpeg_kb"] = float(np.mean([jpeg_size_kb(image) for image in base["images"]]))
    results = [run("kl", 0.0, epochs, prompts, eval_prompts)]
    for divergence in divergences:
        for lam in (*sweep, "auto"):
            results.append(run(divergence, lam, epochs, prompts, eval_prompts))
            r = results[-1]
            print(
                f"{divergence:9s} λ={r['setting']:5s} (mean {r['lam']:.3g}): reward {r['reward']:.4f}, jpeg "
                f"{r['jpeg_kb']:.3f} kB, "
                f"diversity {r['diversity']:.4f}, KL {r['kl_to_base']:.4g}, {r['seconds']:.0f} s",
                flush=True,
            )
    plot(results, base, RESULTS / "lambda_sweep.png")
    lines = [
        f"# ROCM λ sweep on the toy ({epochs} epochs, 4 chains per epoch; "
        f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch thread(s); "
        f"`{' '.join(['python', f'benchmarks/{Path(sys.argv[0]).name}', *sys.argv[1:]])}`)",
        "",
        "| divergence | λ | mean λ | trained reward | JPEG kB | diversity | Σ_k KL to base | train s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        f"| base model | – | – | {base['reward']:.4f} | {base['jpeg_kb']:.3f} | {base['diversity']:.4f} | 0 | 0 |",
    ]
    lines += [
        f"| {r['divergence'] if r['setting'] != '0.0' else '–'} | {r['setting']} | {r['lam']:.3g} | {r['reward']:.4f} "
        f"| {r['jpeg_kb']:.3f} | "
        f"{r['diversity']:.4f} | {r['kl_to_base']:.4g} | {r['seconds']:.0f} |"
        for r in results
    ]
    autos = [r for r in results if r["setting"] == "auto"]
    lines += [
        "",
        "auto λ per epoch: "
        + "; ".join(f"{r['divergence']}: " + ", ".join(f"{v:.3g}" for v in r["lams"]) for r in autos),
    ]
    lines += [
        "",
        "auto D̄ (mean Σ_k D_k of the epoch's chains; target 0.1) per epoch: "
        + "; ".join(f"{r['divergence']}: " + ", ".join(f"{v:.3g}" for v in r["divergences"]) for r in autos),
    ]
    (RESULTS / "lambda.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {RESULTS / 'lambda_sweep.png'} and {RESULTS / 'lambda.md'}")


if __name__ == "__main__":
    main()
