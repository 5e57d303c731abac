"""Fine-tune or steer? The equal-compute table of the toy: RLCM's tuned LoRA against best-of-N and FK steering of the
base model, all toward the JPEG-compressibility reward, on held-out prompts with the same seeds.

    OMP_NUM_THREADS=1 python benchmarks/bench_steering.py                   # trains the tiny-cpu preset (--epochs)
    OMP_NUM_THREADS=1 python benchmarks/bench_steering.py --run-dir runs/x  # its last checkpoint instead

Trains `rlcm train --config tiny-cpu` for `--epochs` epochs (the preset's prompts: the first 8 of imagenet_animals)
unless a run folder is given, then runs `rlcm eval --base --lora <last checkpoint> --steer best-of-n,fk --particles
...` on the next `--prompts` prompts of imagenet_animals (never trained on) × `--seeds` seeds: base; base + best-of-N;
base + FK; tuned; tuned + best-of-N; tuned + FK, each with its sampling compute per image (UNet evaluations + images
scored by the steering reward) and the paired 95% intervals against the base. Writes docs/results/steering.md (the
table, the settings it ran, the training compute of the LoRA) and docs/results/steering.png (reward against compute).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from rlcm.commands.main import main
from rlcm.config.prompts import load_prompts
from rlcm.evaluation.evaluate import evaluate
from rlcm.evaluation.report import markdown_table
from rlcm.evaluation.settings import EvalSettings
from rlcm.evaluation.steering import steered_label as steered

ROOT = Path(__file__).resolve().parent.parent
TRAINED_PROMPTS = 8  # the tiny-cpu preset's prompts.limit
REWARD = "jpeg_compressibility"


def train(run_dir: Path, epochs: int) -> None:
    """`rlcm train --config tiny-cpu` for `epochs` epochs, its last epoch saved."""
    sets = [f"run.epochs={epochs}", f"run.save_every={epochs}", "run.sample_grid_every=1000", "run.tensorboard=false"]
    code = main(
        ["train", "--config", "tiny-cpu", "--output-dir", str(run_dir), *[a for s in sets for a in ("--set", s)]]
    )
    if code:
        raise SystemExit(f"rlcm train exited with {code}")


def last_checkpoint(run_dir: Path) -> Path:
    checkpoints = sorted((run_dir / "checkpoints").glob("epoch-*"))
    if not checkpoints:
        raise SystemExit(f"{run_dir} holds no checkpoints/epoch-NNNN")
    return checkpoints[-1]


def delta(stats: dict, label: str) -> str:
    """The paired difference `label` − base as "+0.1 ± 0.01"."""
    change = stats[f"{label} − base"]
    return f"{change['mean']:+.3g} ± {change['half_width']:.2g}"


def write_results(report: dict, args, command: str, seconds: float, trained_here: bool, out_dir: Path) -> None:
    rows, compute = report["rows"], report["compute"]
    stats = report["metrics"][REWARD]
    base = stats["base"]["mean"]
    particles = sorted({row["particles"] for row in rows.values() if row["method"] != "none"})

    def mean(model: str, method: str, n: int) -> float:
        return stats[steered(model, method, n)]["mean"]

    best = max((label for label in rows if label != "base"), key=lambda label: stats[label]["mean"])
    epochs = (report["training_compute"].get("tuned") or {}).get("epochs", "?")
    lines = [
        "# Fine-tuning against steering at equal sampling compute (toy)",
        "",
        f"Made by `{command}` — {platform.processor() or platform.machine()}, torch {torch.__version__}, CPU, "
        f"OMP_NUM_THREADS=1, shared with other jobs; {seconds / 60:.1f} min in all"
        + (" (training included)." if trained_here else " (training not included)."),
        "",
        f"The toy LCM (`tiny`, random weights), reward {REWARD} (−JPEG size in kB: higher is more compressible). "
        f"The tuned LoRA is RLCM on the `tiny-cpu` preset for {epochs} epochs, trained on the first "
        f"{TRAINED_PROMPTS} prompts of imagenet_animals; evaluated on the next {args.prompts} (never trained on) × "
        f"{args.seeds} seeds, {report['steps']} steps, guidance {report['guidance_scale']}. Steering: particles "
        f"N ∈ {{{args.particles}}}, FK potential {args.potential}, λ {args.lam:g}, resampling after every step; the "
        "steering reward is the evaluated one (smoothness, not steered toward, shows the off-target change). Raw "
        "numbers: [steering_eval.json](steering_eval.json).",
        "",
        markdown_table(report).rstrip(),
        "",
        "![reward against sampling compute per image](steering.png)",
        "",
        "## Reading",
        "",
        f"- Base {base:.4g} at {compute['base']['total_per_image']:g} compute units per image; the highest row is "
        f"**{best}** ({stats[best]['mean']:.4g}, {compute[best]['total_per_image']:g} per image).",
    ]
    steered_base = [label for label in rows if rows[label]["model"] == "base" and rows[label]["method"] != "none"]
    strongest = max(steered_base, key=lambda label: stats[label]["mean"])
    lines += [
        f"- At the base's own sampling cost ({compute['tuned']['total_per_image']:g} per image) the tuned LoRA gains "
        f"{delta(stats, 'tuned')}; the best steering of the base, {strongest}, gains {delta(stats, strongest)} at "
        f"{compute[strongest]['total_per_image']:g} per image "
        f"({compute[strongest]['total_per_image'] / compute['base']['total_per_image']:g}× the sampling compute).",
        "- FK against best-of-N with the same particles (the same UNet evaluations; FK also scores every step): "
        + "; ".join(
            f"N = {n}: base {mean('base', 'fk', n) - mean('base', 'best-of-n', n):+.3g}, "
            f"tuned {mean('tuned', 'fk', n) - mean('tuned', 'best-of-n', n):+.3g}"
            for n in particles
        )
        + " (difference of means, fk − best-of-N).",
        f"- Steering on top of the tuned LoRA: tuned + best-of-{particles[-1]} − tuned = "
        f"{mean('tuned', 'best-of-n', particles[-1]) - stats['tuned']['mean']:+.3g}, "
        f"tuned + fk-{particles[-1]} − tuned = {mean('tuned', 'fk', particles[-1]) - stats['tuned']['mean']:+.3g}.",
    ]
    trained = report["training_compute"].get("tuned") or {}
    extra = compute[strongest]["total_per_image"] - compute["base"]["total_per_image"]
    if trained.get("rollout_unet_evals") and extra > 0:
        lines.append(
            f"- The tuned LoRA samples at the base model's cost; its training is paid once: {trained['samples']} "
            f"samples, {trained['rollout_unet_evals']} rollout UNet evaluations (plus the training passes and "
            f"{trained['samples']} reward calls) in {trained['wall_s']:.0f} s — the sampling surplus of "
            f"{trained['rollout_unet_evals'] / extra:.0f} images of {strongest} ({extra:g} more per image than the "
            "base), counting rollouts alone."
        )
    lines += [
        "- Toy caveat: a random-weight model whose images are noise patterns; the reward moves by hundredths to a "
        "tenth of a kB. The method and the accounting carry over to real models, the sizes of the gaps do not.",
        "",
    ]
    (out_dir / "steering.md").write_text("\n".join(lines))


def main_(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, help="a tiny-cpu run folder to take the last checkpoint of")
    parser.add_argument("--epochs", type=int, default=20, help="epochs to train when no --run-dir is given")
    parser.add_argument("--prompts", type=int, default=8, help="held-out prompts (after the trained ones)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per prompt")
    parser.add_argument("--particles", default="2,4,8", help="comma-separated particle counts N")
    parser.add_argument("--potential", default="diff", choices=("diff", "max", "current"))
    parser.add_argument(
        "--lam", type=float, default=100.0, help="FK inverse temperature: particles' rewards differ by ~0.02-0.05 kB"
    )
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    shown = [a for i, a in enumerate(sys.argv[1:]) if "--out-dir" not in (a, sys.argv[i])]
    command = " ".join(["python benchmarks/bench_steering.py", *shown])
    with tempfile.TemporaryDirectory(prefix="bench-steering-") as scratch:
        run_dir = args.run_dir or Path(scratch) / "tiny-cpu"
        if args.run_dir is None:
            train(run_dir, args.epochs)
        checkpoint = last_checkpoint(run_dir)
        prompts = load_prompts("imagenet_animals")[TRAINED_PROMPTS : TRAINED_PROMPTS + args.prompts]
        settings = EvalSettings(
            prompts=prompts,
            metrics=[REWARD, "smoothness"],
            out=Path(scratch) / "eval",
            runs={"tuned": checkpoint},
            include_base=True,
            seeds=args.seeds,
            steer=["best-of-n", "fk"],
            particles=[int(n) for n in args.particles.split(",")],
            potential=args.potential,
            lam=args.lam,
            resample_every=1,
        )
        report = evaluate(settings)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(settings.out / "compute.png", args.out_dir / "steering.png")
        shutil.copy(settings.out / "eval.json", args.out_dir / "steering_eval.json")
        write_results(report, args, command, time.perf_counter() - start, args.run_dir is None, args.out_dir)
    print((args.out_dir / "steering.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main_())
