"""`rlcm eval`: base vs tuned on held-out prompts with fixed seeds, mean ± 95% CI per metric, paired differences.

Every (prompt i, seed s) pair gets its own CPU generator seeded by `noise_seed(i, s)`, so the base and
the tuned model start from the same noise and their scores pair up. Images come from the stock
`pipe(prompt, num_inference_steps, guidance_scale, generator)` (what users get); the tuned model is the
same pipeline after `pipe.load_lora_weights(lora_dir)`.

Metrics are reward names: the ones the reward service at `service_url` offers are scored over HTTP,
the others by the in-process registry (`rewards_service.scorers.build_scorer`). Confidence intervals are
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
from rewards_service.scorers import REWARD_NAMES, build_scorer

LOCAL_METRICS = tuple(n for n in REWARD_NAMES if n != "composite")
PROMPT_PRESETS = ("imagenet_animals", "simple_animals", "animals_activities")
# Two-sided 95% Student t quantiles t_{0.975, df}, df = 1..30 (beyond 30: Cornish-Fisher expansion).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
Z975 = 1.959964


class EvalSettings(BaseModel):
    """One evaluation: which models, prompts, seeds, metrics, sampler settings and where to write."""

    model_config = ConfigDict(extra="forbid")
    prompts: list[str] = Field(min_length=1)
    metrics: list[str] = Field(min_length=1)
    out: Path
    lora: Path | None = Field(None, description="checkpoint folder with pytorch_lora_weights.safetensors")
    include_base: bool = Field(True, description="also sample the base model (LoRA off) with the same noise")
    model: str | None = Field(None, description="base model; default: the one in the checkpoint's rlcm_model.json, else tiny")
    seeds: int = Field(4, ge=1)
    steps: int | None = Field(None, ge=1, description="inference steps; default: the checkpoint's (rlcm_model.json), else 8")
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


def summarize(base: np.ndarray | None, tuned: np.ndarray | None) -> dict:
    """Per-model mean ± CI, and the paired difference tuned − base over samples both models scored."""
    summary = {}
    if base is not None:
        summary["base"] = mean_ci(base)
    if tuned is not None:
        summary["tuned"] = mean_ci(tuned)
    if base is not None and tuned is not None:
        summary["difference"] = mean_ci(tuned - base)
    return summary


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
        raise FileNotFoundError(f"--prompts {source!r} is neither a file nor a preset; presets: {', '.join(PROMPT_PRESETS)}")
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


def metric_clients(names: list[str], service_url: str | None = None, token: str | None = None, http=None) -> dict[str, RewardClient]:
    """A reward client per metric: HTTP for the rewards the service offers, in process for the registry's.

    Raises ValueError naming the choices for an unknown metric, before anything heavy is built.
    """
    remote = service_rewards(service_url, token, http) if service_url else []
    unknown = [n for n in names if n not in remote and n not in LOCAL_METRICS and ":" not in n]
    if unknown:
        where = f"; the service at {service_url} offers {sorted(remote)}" if service_url else "; pass --service-url for rewards served over HTTP (e.g. llava_bertscore)"
        raise ValueError(f"unknown metric(s) {unknown}: in-process metrics are {list(LOCAL_METRICS)}{where}")
    return {
        n: HttpRewardClient(service_url, n, token, http=http) if n in remote else InProcessRewardClient(build_scorer(n))
        for n in names
    }


def recorded_model(lora: Path | None) -> dict:
    """`rlcm_model.json` of a checkpoint (base model, model_seed, sampling settings), checking the LoRA file is there."""
    return read_record(lora)


# ---- sampling ---------------------------------------------------------------
def noise_seed(prompt_index: int, seed: int) -> int:
    """The generator seed of sample (prompt_index, seed): the same for the base and the tuned model."""
    return int(np.random.default_rng([prompt_index, seed, 11]).integers(0, 2**62))


def sample_images(pipe, prompts: list[str], pairs: list[tuple[int, int]], settings: EvalSettings, sampling: SamplingRecord = DEFAULTS) -> np.ndarray:
    """uint8 [len(pairs), H, W, 3] from the stock pipeline call, one CPU generator per (prompt index, seed)."""
    import torch

    generators = [torch.Generator().manual_seed(noise_seed(i, s)) for i, s in pairs]
    output = pipe(
        [prompts[i] for i, _ in pairs],
        num_inference_steps=settings.steps or sampling.num_steps,
        guidance_scale=sampling.guidance_scale if settings.guidance_scale is None else settings.guidance_scale,
        original_inference_steps=sampling.original_inference_steps,
        height=sampling.height,
        width=sampling.width,
        generator=generators,
        output_type="np",
    )
    return (np.asarray(output.images) * 255).round().clip(0, 255).astype(np.uint8)


def score_model(pipe, label: str, prompts: list[str], clients: dict[str, RewardClient], settings: EvalSettings, grid_pairs: set,
                sampling: SamplingRecord = DEFAULTS) -> tuple[dict, dict]:
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
        scores[name] = np.array([r if v else np.nan for res in results for r, v in zip(res.rewards, res.valid)], dtype=np.float64)
        errors = [e for res in results for e in res.details.get("error", []) if e]
        if errors:
            tqdm.write(f"rlcm eval: {label}: {int(np.isnan(scores[name]).sum())} of {len(pairs)} samples not scored by {name}: {errors[0]}")
    return scores, kept


# ---- outputs ----------------------------------------------------------------
def _fmt(stats: dict) -> str:
    return f"{stats['mean']:.4g} ± {stats['half_width']:.2g}" if stats["n"] else "n/a"


def markdown_table(report: dict) -> str:
    """The metrics of `report` (as written to eval.json) as a markdown table."""
    columns = [c for c in ("base", "tuned", "difference") if c in next(iter(report["metrics"].values()))]
    header = ["metric", *[("tuned − base (paired)" if c == "difference" else c) for c in columns], "n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, stats in report["metrics"].items():
        n = min(stats[c]["n"] for c in columns)
        lines.append("| " + " | ".join([name, *[_fmt(stats[c]) for c in columns], str(n)]) + " |")
    paired = "; tuned − base is paired: same noise per (prompt, seed)" if "difference" in columns else ""
    note = (f"\nmean ± half-width of the 95% t-interval over prompts × seeds ({report['num_prompts']} × {report['seeds']}){paired}. "
            f"Model {report['model']}, LoRA {report['lora'] or 'none'}, {report['steps']} steps, guidance {report['guidance_scale']}.\n")
    return "\n".join(lines) + "\n" + note


def save_comparison_grid(path: Path, rows: dict[str, list[np.ndarray]], captions: list[str], title: str = "", cell: int = 128) -> None:
    """One row per model (labelled on the left), one column per (prompt, seed), a title on top, captions below."""
    font = ImageFont.load_default()
    label_width, title_height, caption_height, gap = 56, 16, 28, 2
    columns = len(captions)
    top = title_height
    grid = Image.new("RGB", (label_width + columns * (cell + gap), top + len(rows) * (cell + gap) + caption_height), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((4, 2), title, fill="black", font=font)
    for r, (label, images) in enumerate(rows.items()):
        y = top + r * (cell + gap)
        draw.text((4, y + cell // 2 - 6), label, fill="black", font=font)
        for c, image in enumerate(images):
            grid.paste(Image.fromarray(image).resize((cell, cell), Image.NEAREST), (label_width + c * (cell + gap), y))
    for c, caption in enumerate(captions):
        for k, line in enumerate(caption.split("\n")[:2]):
            draw.text((label_width + c * (cell + gap) + 2, top + len(rows) * (cell + gap) + 2 + 12 * k), line[:22], fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


# ---- the evaluation ---------------------------------------------------------
def evaluate(settings: EvalSettings, http=None) -> dict:
    """Sample base and/or tuned on every (prompt, seed), score, write eval.json, eval.md, grid.png; returns the report.

    `http` replaces the httpx client of the reward service (tests pass a FastAPI TestClient).
    """
    if settings.lora is None and not settings.include_base:
        raise ValueError("nothing to evaluate: pass --lora DIR and/or --base")
    from rollout.models import load_pipeline

    record = recorded_model(settings.lora)
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
        if settings.lora is not None:
            pipe.load_lora_weights(str(settings.lora))
            scores["tuned"], images["tuned"] = score_model(pipe, "tuned", prompts, clients, settings, grid_pairs, sampling)
    finally:
        for client in clients.values():
            client.close()
    report = {
        "model": model,
        "lora": str(settings.lora) if settings.lora else None,
        "num_prompts": len(prompts),
        "seeds": settings.seeds,
        "steps": settings.steps,
        "guidance_scale": settings.guidance_scale,
        "ci": "95% Student t-interval over prompts x seeds; difference = tuned - base, paired by (prompt, seed)",
        "metrics": {n: summarize(scores.get("base", {}).get(n), scores.get("tuned", {}).get(n)) for n in settings.metrics},
        "samples": [
            {"prompt": p, "prompt_index": i, "seed": s, **{label: {n: _json_float(v[n][i * settings.seeds + s]) for n in settings.metrics} for label, v in scores.items()}}
            for i, p in enumerate(prompts) for s in range(settings.seeds)
        ],
    }
    settings.out.mkdir(parents=True, exist_ok=True)
    (settings.out / "eval.json").write_text(json.dumps(_finite(report), indent=2))
    (settings.out / "eval.md").write_text(markdown_table(report))
    shown = sorted(grid_pairs)
    first = settings.metrics[0]
    captions = [prompts[i] + "\n" + " / ".join(f"{v[first][i * settings.seeds]:.3g}" for v in scores.values()) for i, _ in shown]
    title = f"{first} ({' / '.join(scores)}), seed 0, same noise per column"
    save_comparison_grid(settings.out / "grid.png", {label: [kept[p] for p in shown] for label, kept in images.items()}, captions, title)
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
    settings = EvalSettings(
        prompts=read_prompts(args.prompts, args.limit, args.offset),
        metrics=[m.strip() for m in args.metrics.split(",") if m.strip()],
        out=Path(args.out),
        lora=Path(args.lora) if args.lora else None,
        include_base=args.base or not args.lora,
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
        "eval", help="compare a tuned LoRA with its base model on held-out prompts", formatter_class=DefaultsHelpFormatter,
        description="Sample the tuned and/or base model on (prompt, seed) pairs with the same noise, score them, and write "
                    "eval.json, eval.md and grid.png. Steps, guidance and size default to the checkpoint's (rlcm_model.json).")
    parser.add_argument("--lora", help="a checkpoints/epoch-NNNN folder (the tuned model)")
    parser.add_argument("--base", action="store_true", help="also evaluate the base model (LoRA off), same noise: paired differences")
    parser.add_argument("--model", help="base model (default: the one recorded in the checkpoint, else tiny)")
    parser.add_argument("--prompts", required=True, help=f"file with one prompt a line, or a preset: {', '.join(PROMPT_PRESETS)}")
    parser.add_argument("--limit", type=int, help="use at most this many prompts")
    parser.add_argument("--offset", type=int, default=0, help="skip the first prompts (e.g. the ones trained on)")
    parser.add_argument("--metrics", required=True, help=f"comma-separated reward names; in process: {', '.join(LOCAL_METRICS)}")
    parser.add_argument("--seeds", type=int, default=4, help="samples per prompt (seeds 0..N-1)")
    parser.add_argument("--steps", type=int, help="inference steps H (default: the checkpoint's, from its rlcm_model.json; else 8)")
    parser.add_argument("--guidance-scale", type=float, help="LCM guidance scale w (default: the checkpoint's; else 8.0)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per pipeline call")
    parser.add_argument("--service-url", help="reward service base URL; its rewards are scored over HTTP (token: RLCM_REWARDS_TOKEN)")
    parser.add_argument("--device", help="cuda, cpu, ... (default: cuda if available)")
    parser.add_argument("--out", required=True, help="output folder for eval.json, eval.md, grid.png")
    parser.set_defaults(func=_run)
    return parser
