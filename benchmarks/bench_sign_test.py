"""Sign test of every algorithm's toy preset: does what it learns come from its reward?

    python benchmarks/bench_sign_test.py                      # every registered toy, 3 seeds, the preset's epochs
    python benchmarks/bench_sign_test.py --algorithms rlcm --seeds 2 --epochs 4   # smoke run

For each registered algorithm with a `*tiny-cpu` preset (`rlcm.config.schema.toy_presets`: a new algorithm is
covered by its toy preset, no list to edit), each seed and each reward the learner sees (r, −r, or the control:
a random number per sample independent of the image for rollout algorithms, a random gradient direction for
first-order ones; `cluster.sign_test`), one run with the preset's config (`run.seed` = the seed) for its
`run.epochs` epochs, in this process with the driver's learner and rollout code (no Ray). The final policy is scored
with the true reward r on held-out prompts (never trained on) × fixed noises. Gain over the control = mean over
seeds of (r-run − control-run), SE = √(s²_r/n + s²_c/n) over seeds; passes when r is ≥ 3 SE above the control and
−r ≥ 3 SE below it.
Writes docs/results/sign_test.md (the table and how it was made) and docs/results/sign_test_runs.json (raw).
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

from cluster.sign_test import MODES, gain, held_out_prompts, rollout_worker, sign_test_run
from rlcm.config.schema import load_config, toy_presets

ROOT = Path(__file__).resolve().parent.parent
HELD_OUT_PROMPTS, NOISES, Z_PASS = 8, 4, 3.0
TOYS = toy_presets()


def run_all(args) -> dict:
    """Every run; the raw results are rewritten after each run (an interrupted benchmark keeps what it measured)."""
    runs, start = [], time.perf_counter()

    shown = [a for i, a in enumerate(sys.argv[1:]) if "--out-dir" not in (a, sys.argv[i])]  # where, not what
    command = " ".join(["python benchmarks/bench_sign_test.py", *shown])

    def results() -> dict:
        return {
            "command": command,
            "commands": {name: command for name in args.algorithms},
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "seeds": args.seeds,
            "total_s": time.perf_counter() - start,
            "runs": runs,
        }

    for name in args.algorithms:
        preset = TOYS[name]
        config = load_config(preset, [f"run.epochs={args.epochs}"] if args.epochs else [])
        held_out, worker = held_out_prompts(config, HELD_OUT_PROMPTS), rollout_worker(config)
        for seed in range(args.seeds):
            for mode in MODES:
                t0 = time.perf_counter()
                seeded = load_config(preset, [f"run.seed={seed}", f"run.epochs={config.run.epochs}"])
                run = sign_test_run(
                    seeded, mode, seeded.run.epochs, held_out, NOISES, worker, initial=(seed == 0 and mode == "r")
                )
                runs.append(
                    {
                        "algorithm": name,
                        "preset": preset,
                        "epochs": seeded.run.epochs,
                        **run,
                        "seconds": time.perf_counter() - t0,
                    }
                )
                print(
                    f"{name:5s} seed {seed} {mode:>6s}: train reward {run['curve'][0]:.3f} -> {run['curve'][-1]:.3f}, "
                    f"held-out {run['held_out']:.4f} ({runs[-1]['seconds']:.0f} s)",
                    flush=True,
                )
                (args.out_dir / "sign_test_runs.json").write_text(json.dumps(results(), indent=1))
    return results()


def rows(results: dict) -> list[dict]:
    """One row per algorithm: held-out reward per condition, gains of r and −r over the control, pass/fail."""
    out = []
    for name in dict.fromkeys(r["algorithm"] for r in results["runs"]):
        runs = [r for r in results["runs"] if r["algorithm"] == name]
        held = {mode: [r["held_out"] for r in runs if r["mode"] == mode] for mode in MODES}
        up, down = (
            gain(held[mode], held["random"]) if min(len(held[mode]), len(held["random"])) >= 2 else None
            for mode in ("r", "-r")
        )
        initial = [r["initial"] for r in runs if "initial" in r]
        out.append(
            {
                "algorithm": name,
                "preset": runs[0]["preset"],
                "reward": load_config(runs[0]["preset"]).reward.name,
                "epochs": runs[0]["epochs"],
                "seeds": len(held["r"]),
                "initial": initial[0] if initial else float("nan"),
                "held": held,
                "up": up,
                "down": down,
                "passed": up is not None and down is not None and up.z >= Z_PASS and down.z <= -Z_PASS,
            }
        )
    return out


def table(results: dict) -> list[str]:
    def cell(values):
        return (
            "–"
            if not values
            else f"{values[0]:.3f}"
            if len(values) == 1
            else f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"
        )

    def g(x):
        if x is None:
            return "– (< 2 seeds)"
        lo, hi = x.interval()
        return f"{x.delta:+.3f} [{lo:+.3f}, {hi:+.3f}] ({x.z:+.1f} SE)"

    lines = [
        "| algorithm | preset | reward r | epochs | seeds | initial policy | r | random control | −r "
        "| r − control [95% CI] | −r − control [95% CI] | pass |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for row in rows(results):
        h = row["held"]
        lines.append(
            f"| {row['algorithm']} | {row['preset']} | {row['reward']} | {row['epochs']} | {row['seeds']} | "
            f"{row['initial']:.3f} | "
            f"{cell(h['r'])} | {cell(h['random'])} | {cell(h['-r'])} | {g(row['up'])} | {g(row['down'])} | "
            f"{'yes' if row['passed'] else 'NO'} |"
        )
    return lines


def write_results(results: dict, path: Path) -> None:
    lines = [
        "# Sign test of the toys: do they learn from their reward?",
        "",
        f"`{results['command']}` — {results['machine']}, torch {results['torch']}, CPU, 2 cores, shared with other "
        f"jobs; {results['total_s'] / 60:.1f} min in all.",
        "",
        " ".join(
            [
                "Each toy preset is trained as `rlcm train --config <preset>` trains it (its learner, sampler,",
                "batches, step sizes and epochs; in one process, no Ray) three ways. Rollout algorithms: the learner",
                "sees the preset's reward r (JPEG compressibility, −kB), its negation −r, or a random control (a",
                "standard normal number per sample, independent of the image). First-order algorithms ascend their",
                "differentiable reward r (smoothness, −total variation), −r, or the control ⟨w, image⟩ with a fresh",
                "w ~ N(0, I) per call (a gradient that follows nothing). The final policy of each run is scored with",
                f"the true r on {HELD_OUT_PROMPTS} held-out prompts (not in the training set) × {NOISES} fixed noises.",
                "Cells: mean ± sd over seeds of that held-out reward (higher = better under r); initial policy: the",
                "untrained LoRA (seed 0); seeds: r-runs done (an interrupted benchmark reports what it measured). A",
                "gain is the difference of seed means, SE = √(s²_a/n_a + s²_b/n_b), the interval Δ ± 1.96·SE. Pass:",
                f"r ≥ {Z_PASS:g} SE above the control and −r ≥ {Z_PASS:g} SE below it, i.e. what the run learns",
                "follows the sign of its reward and is not a drift any reward would produce.",
            ]
        ),
        "",
        *table(results),
        "",
        "See `docs/results/toy_drift.md` for why the toys' presets are set as they are.",
        "",
    ]
    path.write_text("\n".join(lines))


def join_runs(parts: list[dict]) -> dict:
    """Saved results joined into one; an algorithm's runs in a later part replace its runs in the earlier ones (a
    rerun of one algorithm updates its rows)."""
    runs: dict[str, list[dict]] = {}
    commands: dict[str, str] = {}
    for part in parts:
        for name in dict.fromkeys(run["algorithm"] for run in part["runs"]):
            runs[name] = [run for run in part["runs"] if run["algorithm"] == name]
            commands[name] = part.get("commands", {}).get(name, part["command"])
    return {
        **parts[0],
        "runs": [run for group in runs.values() for run in group],
        "total_s": sum(run["seconds"] for group in runs.values() for run in group),
        "commands": commands,
        "command": " + ".join(dict.fromkeys(commands.values())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algorithms", nargs="+", default=list(TOYS), choices=list(TOYS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, help="override the presets' run.epochs (default: theirs)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "results")
    parser.add_argument(
        "--report-only",
        type=Path,
        nargs="+",
        help="rebuild the report from saved sign_test_runs.json files (runs joined)",
    )
    args = parser.parse_args()
    if args.seeds < 2:
        parser.error("--seeds must be >= 2 (a standard error needs two)")
    torch.set_num_threads(1)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        results = join_runs([json.loads(path.read_text()) for path in args.report_only])
        (args.out_dir / "sign_test_runs.json").write_text(json.dumps(results, indent=1))
    else:
        results = run_all(args)
    write_results(results, args.out_dir / "sign_test.md")
    print("\n".join(table(results)))
    print(f"wrote {args.out_dir}/sign_test.md, sign_test_runs.json")


if __name__ == "__main__":
    main()
