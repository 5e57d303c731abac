"""The evaluation's outputs: the paper-shaped markdown table, the comparison grid, strict-JSON numbers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _fmt(stats: dict | None) -> str:
    if not stats or not stats["n"] or stats["mean"] is None or not math.isfinite(stats["mean"]):
        return "n/a"
    half = stats["half_width"]
    return f"{stats['mean']:.4g} ± {half:.2g}" if half is not None and math.isfinite(half) else f"{stats['mean']:.4g}"


def markdown_table(report: dict) -> str:
    """`report` (as written to eval.json) as the paper-shaped table (rows = models, columns = metrics), then the
    paired differences to the base."""
    metrics, models, trained = list(report["metrics"]), report["models"], report["trained"]
    runs = [m for m in models if m != "base"]
    with_base = "base" in models
    compute = report.get("compute")
    header = (
        ["model", *metrics]
        + (["off-target Δ vs base"] if with_base and runs else [])
        + (["sampling compute / image (UNet + reward)"] if compute else [])
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in models:
        cells = [
            ("**" + _fmt(report["metrics"][m].get(model)) + "** †")
            if trained.get(model) == m
            else _fmt(report["metrics"][m].get(model))
            for m in metrics
        ]
        if with_base and runs:
            change = report["off_target"].get(model)
            cells.append(
                "" if model == "base" else ("n/a" if change is None or not math.isfinite(change) else f"{change:+.1f}%")
            )
        if compute:
            cost = compute[model]
            cells.append(
                f"{cost['unet_evals_per_image']:g} + {cost['images_scored_per_image']:g} = {cost['total_per_image']:g}"
            )
        lines.append("| " + " | ".join([model, *cells]) + " |")
    n = min((s["n"] for stats in report["metrics"].values() for s in stats.values()), default=0)
    note = [
        "",
        f"mean ± half-width of the 95% t-interval over prompts × seeds ({report['num_prompts']} × {report['seeds']}, "
        f"n = {n} where all scored). † = the metric the run trained on, or the base was steered toward (bold); "
        "off-target Δ = mean over the other metrics of (run − base)/|base|.",
        f"Model {report['model']}, {report['steps']} steps, guidance {report['guidance_scale']}; runs: "
        + (", ".join(f"{name} = {path}" for name, path in report["runs"].items()) or "none")
        + ".",
    ]
    note += steering_notes(report)
    if with_base and runs:
        note += [
            "",
            "Paired differences run − base (same noise per prompt and seed):",
            "",
            "| run | " + " | ".join(metrics) + " |",
            "|" + "---|" * (len(metrics) + 1),
        ]
        note += [
            "| " + " | ".join([run, *[_fmt(report["metrics"][m].get(f"{run} − base")) for m in metrics]]) + " |"
            for run in runs
        ]
    return "\n".join(lines + note) + "\n"


def steering_notes(report: dict) -> list[str]:
    """How the steered rows were steered, what the compute column counts, and each run's training compute."""
    steering = report.get("steering")
    if not steering:
        return []
    notes = [
        "",
        f"Steered rows: toward {steering['reward']}, one (prompt, seed) at a time with its N particles in one batch, "
        f"from the seed's noise; FK potential {steering['potential']}, λ {steering['lam']:g}, resampling every "
        f"K = {steering['resample_every']} steps (0: never). Sampling compute per image = UNet evaluations (N × "
        "steps, × 2 with guidance) + images decoded and scored by the steering reward (N per scored step); the "
        "final scoring by the metrics is not counted.",
    ]
    for name, cost in report.get("training_compute", {}).items():
        notes.append(
            f"Training compute of {name}: "
            + (
                f"{cost['epochs']} epochs, {cost['samples']} samples trained on"
                + (f" ({cost['rollout_unet_evals']} rollout UNet evaluations)" if cost["rollout_unet_evals"] else "")
                + f", {cost['wall_s']:.0f} s wall clock (its metrics.jsonl)."
                if cost
                else "not recorded (no metrics.jsonl beside the checkpoint)."
            )
        )
    return notes


def save_comparison_grid(
    path: Path, rows: dict[str, list[np.ndarray]], captions: list[str], title: str = "", cell: int = 128
) -> None:
    """One row per model (labelled on the left), one column per (prompt, seed), a title on top, captions below."""
    font = ImageFont.load_default()
    label_width, title_height, caption_height, gap = max(56, 7 * max(map(len, rows), default=0) + 8), 16, 28, 2
    columns = len(captions)
    top = title_height
    grid = Image.new(
        "RGB", (label_width + columns * (cell + gap), top + len(rows) * (cell + gap) + caption_height), "white"
    )
    draw = ImageDraw.Draw(grid)
    draw.text((4, 2), title, fill="black", font=font)
    for r, (label, images) in enumerate(rows.items()):
        y = top + r * (cell + gap)
        draw.text((4, y + cell // 2 - 6), label, fill="black", font=font)
        for c, image in enumerate(images):
            grid.paste(Image.fromarray(image).resize((cell, cell), Image.NEAREST), (label_width + c * (cell + gap), y))
    for c, caption in enumerate(captions):
        for k, line in enumerate(caption.split("\n")[:2]):
            draw.text(
                (label_width + c * (cell + gap) + 2, top + len(rows) * (cell + gap) + 2 + 12 * k),
                line[:22],
                fill="black",
                font=font,
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def json_float(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def strict_json(value):
    """NaN and inf become null so eval.json is strict JSON."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strict_json(v) for v in value]
    return json_float(value) if isinstance(value, float) else value
