"""`rlcm eval`: the base model and several tuned runs on held-out prompts with fixed seeds, every metric,
mean ± 95% CI, paired differences to the base, in one table shaped like ROCM's (rows = models, columns = metrics,
each run's trained metric marked and left out of its off-target summary).

Every (prompt i, seed s) pair gets its own CPU generator seeded by `noise_seed(i, s)`, so the base and
every tuned model start from the same noise and their scores pair up. Images come from the stock
`pipe(prompt, num_inference_steps, guidance_scale, generator)` (what users get); a tuned model is the
same pipeline after `pipe.load_lora_weights(lora_dir)` (unloaded before the next run).

Metrics are reward names: the ones the reward service at `service_url` offers are scored over HTTP,
the others by the in-process registry (`rewards_service.registry.build_scorer`). Confidence intervals are
t-intervals over the n = prompts × seeds samples (scipy's t quantile when installed, else a table).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from cluster.checkpoint_record import DEFAULTS, SamplingRecord, read_record, sampling_settings
from rewards_service.client import HttpRewardClient, InProcessRewardClient, RewardClient
from rewards_service.registry import REWARD_NAMES, build_scorer

LOCAL_METRICS = tuple(n for n in REWARD_NAMES if n != "composite")
PROMPT_PRESETS = ("imagenet_animals", "simple_animals", "animals_activities")
# Two-sided 95% Student t quantiles t_{0.975, df}, df = 1..30 (beyond 30: Cornish-Fisher expansion).
T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)
Z975 = 1.959964


class EvalSettings(BaseModel):
    """One evaluation: which models, prompts, seeds, metrics, sampler settings and where to write."""

    model_config = ConfigDict(extra="forbid")
    prompts: list[str] = Field(min_length=1)
    metrics: list[str] = Field(min_length=1)
    out: Path
    runs: dict[str, Path] = Field(
        default_factory=dict, description="run name -> checkpoint folder with pytorch_lora_weights.safetensors"
    )
    lora: Path | None = Field(None, description="one checkpoint folder, evaluated as the run named 'tuned'")
    trained: dict[str, str] = Field(
        default_factory=dict,
        description="run name -> the metric it trained on (default: reward.name of the run's config.yaml)",
    )
    include_base: bool = Field(True, description="also sample the base model (LoRA off) with the same noise")
    model: str | None = Field(
        None, description="base model; default: the one in the checkpoint's rlcm_model.json, else tiny"
    )
    seeds: int = Field(4, ge=1)
    steps: int | None = Field(
        None, ge=1, description="inference steps; default: the checkpoint's (rlcm_model.json), else 8"
    )
    guidance_scale: float | None = Field(None, description="guidance scale; default: the checkpoint's, else 8.0")
    batch_size: int = Field(8, ge=1)
    grid_columns: int = Field(8, ge=1)
    service_url: str | None = None
    service_token: str | None = None
    device: str | None = None


# ---- statistics -------------------------------------------------------------
def t_quantile_975(df: int) -> tuple[float, str]:
    """t_{0.975, df} and where it came from ("scipy" or "table")."""
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, df)), "scipy"
    except ImportError:
        return t_table_975(df), "table"


def t_table_975(df: int) -> float:
    """Table for df ≤ 30; above, t ≈ z + (z³+z)/(4df) + (5z⁵+16z³+3z)/(96df²) (error < 1e-3)."""
    if df < 1:
        raise ValueError(f"a t quantile needs df ≥ 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values: np.ndarray) -> dict:
    """Mean with a two-sided 95% t-interval over the finite values (NaN = unscored samples, left out)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    n = len(values)
    mean = float(values.mean()) if n else float("nan")
    half, source = float("nan"), "none"
    if n >= 2:
        quantile, source = t_quantile_975(n - 1)
        half = quantile * float(values.std(ddof=1)) / math.sqrt(n)
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "half_width": half, "n": n, "t_source": source}


def summarize(scores: dict[str, np.ndarray]) -> dict:
    """Per model mean ± CI; with a `base`, each run's paired difference run − base (samples both scored) under "<run> −
    base"."""
    summary = {label: mean_ci(values) for label, values in scores.items()}
    if "base" in scores:
        summary.update(
            {f"{label} − base": mean_ci(values - scores["base"]) for label, values in scores.items() if label != "base"}
        )
    return summary


def off_target_change(metrics: dict[str, dict], run: str, trained: str | None) -> float:
    """Mean relative change (run − base)/|base| in % over the metrics `run` did not train on (NaN without a base)."""
    changes = [
        100 * (stats[run]["mean"] - stats["base"]["mean"]) / abs(stats["base"]["mean"])
        for name, stats in metrics.items()
        if name != trained
        and "base" in stats
        and run in stats
        and stats["base"]["mean"] not in (0.0,)
        and math.isfinite(stats["base"]["mean"])
    ]
    return float(np.mean(changes)) if changes else float("nan")


# ---- inputs -----------------------------------------------------------------
def read_prompts(source: str, limit: int | None = None, offset: int = 0) -> list[str]:
    """A file with one prompt a line, or a preset of `cluster.prompts.load_prompts`; `offset` skips the first ones
    (e.g. the prompts a run trained on), `limit` caps the count."""
    from cluster.prompts import load_prompts

    if Path(source).is_file():
        prompts = [line.strip() for line in Path(source).read_text().splitlines() if line.strip()]
    elif source in PROMPT_PRESETS:
        prompts = load_prompts(source)
    else:
        raise FileNotFoundError(
            f"--prompts {source!r} is neither a file nor a preset; presets: {', '.join(PROMPT_PRESETS)}"
        )
    prompts = prompts[offset:][:limit] if limit else prompts[offset:]
    if not prompts:
        raise ValueError(f"no prompts left from {source!r} (offset {offset}, limit {limit})")
    return prompts


def service_rewards(url: str, token: str | None = None, http=None) -> list[str]:
    """The reward names the service at `url` offers (GET /v1/rewards)."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = (http or httpx.Client(base_url=url.rstrip("/"), timeout=30)).get("/v1/rewards", headers=headers)
        response.raise_for_status()
    except httpx.HTTPError as error:
        raise ConnectionError(f"cannot list the rewards of the service at {url}: {error}") from error
    return [reward["name"] for reward in response.json()["rewards"]]


def metric_clients(
    names: list[str], service_url: str | None = None, token: str | None = None, http=None
) -> dict[str, RewardClient]:
    """A reward client per metric: HTTP for the rewards the service offers, in process for the registry's.

    Raises ValueError naming the choices for an unknown metric, before anything heavy is built.
    """
    remote = service_rewards(service_url, token, http) if service_url else []
    unknown = [n for n in names if n not in remote and n not in LOCAL_METRICS and ":" not in n]
    if unknown:
        where = (
            f"; the service at {service_url} offers {sorted(remote)}"
            if service_url
            else "; pass --service-url for rewards served over HTTP (e.g. llava_bertscore)"
        )
        raise ValueError(f"unknown metric(s) {unknown}: in-process metrics are {list(LOCAL_METRICS)}{where}")
    return {
        n: HttpRewardClient(service_url, n, token, http=http) if n in remote else InProcessRewardClient(build_scorer(n))
        for n in names
    }


def recorded_model(lora: Path | None) -> dict:
    """`rlcm_model.json` of a checkpoint (base model, model_seed, sampling settings), checking the LoRA file is
    there."""
    return read_record(lora)


def trained_metric(lora: Path) -> str | None:
    """reward.name of the run that wrote checkpoint `lora` (<run>/checkpoints/epoch-NNNN -> <run>/config.yaml), if
    recorded."""
    import yaml

    config = lora.parent.parent / "config.yaml"
    if not config.is_file():
        return None
    reward = (yaml.safe_load(config.read_text()) or {}).get("reward") or {}
    return reward.get("name") if isinstance(reward, dict) else None


def parse_runs(values: list[str]) -> dict[str, Path]:
    """`--lora NAME=DIR` (repeatable); a bare DIR is named after its run folder (<run>/checkpoints/epoch-NNNN), or
    'tuned' alone."""
    runs: dict[str, Path] = {}
    for value in values:
        name, sep, directory = value.partition("=")
        if not sep:
            path = Path(value)
            name = (
                "tuned"
                if len(values) == 1
                else (path.parent.parent.name if path.parent.name == "checkpoints" else path.name)
            )
            directory = value
        if not name or name == "base" or name in runs:
            raise ValueError(
                f"--lora {value!r}: run names must be unique, non-empty and not 'base'; use --lora NAME=DIR"
            )
        runs[name] = Path(directory)
    return runs


# ---- sampling ---------------------------------------------------------------
def noise_seed(prompt_index: int, seed: int) -> int:
    """The generator seed of sample (prompt_index, seed): the same for the base and the tuned model."""
    return int(np.random.default_rng([prompt_index, seed, 11]).integers(0, 2**62))


def sample_images(
    pipe, prompts: list[str], pairs: list[tuple[int, int]], settings: EvalSettings, sampling: SamplingRecord = DEFAULTS
) -> np.ndarray:
    """uint8 [len(pairs), H, W, 3] from the stock pipeline call, one CPU generator per (prompt index, seed)."""
    import torch

    generators = [torch.Generator().manual_seed(noise_seed(i, s)) for i, s in pairs]
    output = pipe(
        [prompts[i] for i, _ in pairs],
        num_inference_steps=settings.steps or sampling.num_steps,
        guidance_scale=sampling.guidance_scale if settings.guidance_scale is None else settings.guidance_scale,
        **sampling.sampler_options(),
        height=sampling.height,
        width=sampling.width,
        generator=generators,
        output_type="np",
    )
    return (np.asarray(output.images) * 255).round().clip(0, 255).astype(np.uint8)


def score_model(
    pipe,
    label: str,
    prompts: list[str],
    clients: dict[str, RewardClient],
    settings: EvalSettings,
    grid_pairs: set,
    sampling: SamplingRecord = DEFAULTS,
) -> tuple[dict, dict]:
    """Sample every (prompt, seed) pair in batches, score each batch while the next one samples.

    Returns ({metric: [n] scores, NaN where unscored}, {pair: image} for the grid pairs).
    """
    pairs = [(i, s) for i in range(len(prompts)) for s in range(settings.seeds)]
    futures, kept = {name: [] for name in clients}, {}
    # a bar only on a terminal (disable=None): logs and pipes get the final table, not bar redraws
    for start in tqdm(range(0, len(pairs), settings.batch_size), desc=f"rlcm eval {label}", unit="batch", disable=None):
        batch = pairs[start : start + settings.batch_size]
        images = sample_images(pipe, prompts, batch, settings, sampling)
        for name, client in clients.items():
            futures[name].append(client.submit(images, [prompts[i] for i, _ in batch]))
        kept.update({pair: image for pair, image in zip(batch, images) if pair in grid_pairs})
    scores = {}
    for name, client in clients.items():
        results = [client.result(f) for f in futures[name]]
        scores[name] = np.array(
            [r if v else np.nan for res in results for r, v in zip(res.rewards, res.valid)], dtype=np.float64
        )
        errors = [e for res in results for e in res.details.get("error", []) if e]
        if errors:
            tqdm.write(
                f"rlcm eval: {label}: {int(np.isnan(scores[name]).sum())} of {len(pairs)} samples not scored by "
                f"{name}: {errors[0]}"
            )
    return scores, kept


# ---- outputs ----------------------------------------------------------------
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
    header = ["model", *metrics] + (["off-target Δ vs base"] if with_base and runs else [])
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
        lines.append("| " + " | ".join([model, *cells]) + " |")
    n = min((s["n"] for stats in report["metrics"].values() for s in stats.values()), default=0)
    note = [
        "",
        f"mean ± half-width of the 95% t-interval over prompts × seeds ({report['num_prompts']} × {report['seeds']}, "
        f"n = {n} where all scored). † = the metric the run trained on (bold); off-target Δ = mean over the other "
        "metrics of (run − base)/|base|.",
        f"Model {report['model']}, {report['steps']} steps, guidance {report['guidance_scale']}; runs: "
        + (", ".join(f"{name} = {path}" for name, path in report["runs"].items()) or "none")
        + ".",
    ]
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


# ---- the evaluation ---------------------------------------------------------
def evaluate(settings: EvalSettings, http=None) -> dict:
    """Sample base and/or tuned on every (prompt, seed), score, write eval.json, eval.md, grid.png; returns the report.

    `http` replaces the httpx client of the reward service (tests pass a FastAPI TestClient).
    """
    runs = dict(settings.runs)
    if settings.lora is not None:
        if "tuned" in runs:
            raise ValueError("pass one LoRA as lora= or name it in runs, not both under 'tuned'")
        runs["tuned"] = settings.lora
    if not runs and not settings.include_base:
        raise ValueError("nothing to evaluate: pass --lora [NAME=]DIR (repeatable) and/or --base")
    from rollout.models import load_pipeline

    records = {name: recorded_model(path) for name, path in runs.items()}
    models_recorded = {(r.get("model"), r.get("model_seed", 0)) for r in records.values() if r}
    if len(models_recorded) > 1 and settings.model is None:
        raise ValueError(
            f"the runs were trained on different base models {sorted(map(str, models_recorded))}; evaluate them "
            "separately or pass --model"
        )
    sampled_with = {json.dumps(r.get("sampling"), sort_keys=True) for r in records.values() if r.get("sampling")}
    if len(sampled_with) > 1 and (settings.steps is None or settings.guidance_scale is None):
        raise ValueError(
            f"the runs were trained with different sampling settings ({'; '.join(sorted(sampled_with))}); "
            "pass --steps and --guidance-scale to compare them under one setting"
        )
    record = next((r for r in records.values() if r), {})
    trained = {name: settings.trained.get(name) or trained_metric(path) for name, path in runs.items()}
    sampling, origin = sampling_settings(record, settings.steps, settings.guidance_scale)
    print(f"rlcm eval: {origin}")
    settings = settings.model_copy(update={"steps": sampling.num_steps, "guidance_scale": sampling.guidance_scale})
    clients = metric_clients(settings.metrics, settings.service_url, settings.service_token, http)
    model = settings.model or record.get("model", "tiny")
    pipe = load_pipeline(model, device=settings.device, seed=record.get("model_seed", 0))
    prompts = settings.prompts
    grid_pairs = {(i, 0) for i in range(min(settings.grid_columns, len(prompts)))}
    scores, images = {}, {}
    try:
        if settings.include_base:
            scores["base"], images["base"] = score_model(pipe, "base", prompts, clients, settings, grid_pairs, sampling)
        for name, path in runs.items():
            pipe.load_lora_weights(str(path))
            try:
                scores[name], images[name] = score_model(pipe, name, prompts, clients, settings, grid_pairs, sampling)
            finally:
                pipe.unload_lora_weights()
    finally:
        for client in clients.values():
            client.close()
    metrics = {n: summarize({label: v[n] for label, v in scores.items()}) for n in settings.metrics}
    report = {
        "model": model,
        "models": list(scores),
        "runs": {name: str(path) for name, path in runs.items()},
        "trained": {name: metric for name, metric in trained.items() if metric},
        "num_prompts": len(prompts),
        "seeds": settings.seeds,
        "steps": settings.steps,
        "guidance_scale": settings.guidance_scale,
        "ci": "95% Student t-interval over prompts x seeds; '<run> − base' is paired by (prompt, seed)",
        "metrics": metrics,
        "off_target": {name: off_target_change(metrics, name, trained.get(name)) for name in runs}
        if settings.include_base
        else {},
        "samples": [
            {
                "prompt": p,
                "prompt_index": i,
                "seed": s,
                **{
                    label: {n: _json_float(v[n][i * settings.seeds + s]) for n in settings.metrics}
                    for label, v in scores.items()
                },
            }
            for i, p in enumerate(prompts)
            for s in range(settings.seeds)
        ],
    }
    settings.out.mkdir(parents=True, exist_ok=True)
    (settings.out / "eval.json").write_text(json.dumps(_finite(report), indent=2))
    (settings.out / "eval.md").write_text(markdown_table(report))
    shown = sorted(grid_pairs)
    first = settings.metrics[0]
    captions = [
        prompts[i] + "\n" + " / ".join(f"{v[first][i * settings.seeds]:.3g}" for v in scores.values()) for i, _ in shown
    ]
    title = f"{first} ({' / '.join(scores)}), seed 0, same noise per column"
    save_comparison_grid(
        settings.out / "grid.png", {label: [kept[p] for p in shown] for label, kept in images.items()}, captions, title
    )
    return report


def _json_float(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _finite(value):
    """NaN and inf become null so eval.json is strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return _json_float(value) if isinstance(value, float) else value


# ---- CLI --------------------------------------------------------------------
def _run(args: argparse.Namespace) -> int:
    runs = parse_runs(args.lora or [])
    trained = {}
    for value in args.trained or []:
        name, sep, metric = value.partition("=")
        if not sep or name not in runs:
            raise ValueError(f"--trained {value!r}: expected RUN=METRIC with RUN one of {sorted(runs)}")
        trained[name] = metric
    settings = EvalSettings(
        prompts=read_prompts(args.prompts, args.limit, args.offset),
        metrics=[m.strip() for m in args.metrics.split(",") if m.strip()],
        out=Path(args.out),
        runs=runs,
        trained=trained,
        include_base=args.base or not runs,
        model=args.model,
        seeds=args.seeds,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        batch_size=args.batch_size,
        service_url=args.service_url,
        service_token=os.environ.get("RLCM_REWARDS_TOKEN"),
        device=args.device,
    )
    report = evaluate(settings)
    print(markdown_table(report))
    print(f"wrote {settings.out / 'eval.json'}, eval.md, grid.png")
    return 0


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Register `rlcm eval` on the CLI's subparsers."""
    from cluster.helpfmt import DefaultsHelpFormatter

    parser = subparsers.add_parser(
        "eval",
        help="compare tuned LoRAs with each other and their base model on held-out prompts",
        formatter_class=DefaultsHelpFormatter,
        description="Sample the tuned and/or base model on (prompt, seed) pairs with the same noise, score them, and "
        "write eval.json, eval.md and grid.png. Steps, guidance and size default to the checkpoint's "
        "(rlcm_model.json).",
    )
    parser.add_argument(
        "--lora",
        action="append",
        metavar="[NAME=]DIR",
        help="a checkpoints/epoch-NNNN folder; repeat for several runs (NAME defaults to the run folder, or 'tuned' "
        "for one)",
    )
    parser.add_argument(
        "--trained",
        action="append",
        metavar="NAME=METRIC",
        help="the metric run NAME trained on (default: reward.name in the run's config.yaml); marked and left out of "
        "its off-target mean",
    )
    parser.add_argument(
        "--base", action="store_true", help="also evaluate the base model (LoRA off), same noise: paired differences"
    )
    parser.add_argument("--model", help="base model (default: the one recorded in the checkpoint, else tiny)")
    parser.add_argument(
        "--prompts", required=True, help=f"file with one prompt a line, or a preset: {', '.join(PROMPT_PRESETS)}"
    )
    parser.add_argument("--limit", type=int, help="use at most this many prompts")
    parser.add_argument("--offset", type=int, default=0, help="skip the first prompts (e.g. the ones trained on)")
    parser.add_argument(
        "--metrics", required=True, help=f"comma-separated reward names; in process: {', '.join(LOCAL_METRICS)}"
    )
    parser.add_argument("--seeds", type=int, default=4, help="samples per prompt (seeds 0..N-1)")
    parser.add_argument(
        "--steps", type=int, help="inference steps H (default: the checkpoint's, from its rlcm_model.json; else 8)"
    )
    parser.add_argument(
        "--guidance-scale", type=float, help="LCM guidance scale w (default: the checkpoint's; else 8.0)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per pipeline call")
    parser.add_argument(
        "--service-url", help="reward service base URL; its rewards are scored over HTTP (token: RLCM_REWARDS_TOKEN)"
    )
    parser.add_argument("--device", help="cuda, cpu, ... (default: cuda if available)")
    parser.add_argument("--out", required=True, help="output folder for eval.json, eval.md, grid.png")
    parser.set_defaults(func=_run)
    return parser
