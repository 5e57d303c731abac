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

import json

from rlcm.evaluation.inputs import metric_clients, recorded_model, trained_metric, training_compute
from rlcm.evaluation.report import json_float, markdown_table, save_comparison_grid, strict_json
from rlcm.evaluation.sampling import score_model
from rlcm.evaluation.settings import EvalSettings
from rlcm.evaluation.statistics import off_target_change, summarize
from rlcm.evaluation.steering import save_compute_plot, score_steered, steered_label, unsteered_compute
from rlcm.runs.checkpoint_record import sampling_settings


def evaluate(settings: EvalSettings, http=None) -> dict:
    """Sample base and/or tuned on every (prompt, seed), score, write eval.json, eval.md, grid.png; returns the report.

    With `settings.steer`, every model is also steered by each method with each particle count on the same pairs
    (`rlcm.evaluation.steering`): their rows, the sampling compute per image of every row, the runs' training compute
    and compute.png join the report.

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
    steer_reward = settings.steer_reward or settings.metrics[0]
    steer_client = (
        metric_clients([steer_reward], settings.service_url, settings.service_token, http)[steer_reward]
        if settings.steer
        else None
    )
    model = settings.model or record.get("model", "tiny")
    pipe = load_pipeline(model, device=settings.device, seed=record.get("model_seed", 0))
    prompts = settings.prompts
    grid_pairs = {(i, 0) for i in range(min(settings.grid_columns, len(prompts)))}
    scores, images, rows, compute = {}, {}, {}, {}

    def sample_model(name: str) -> None:
        scores[name], images[name] = score_model(pipe, name, prompts, clients, settings, grid_pairs, sampling)
        rows[name], compute[name] = {"model": name, "method": "none", "particles": 1}, unsteered_compute(pipe, sampling)
        for method in settings.steer:
            for particles in settings.particles:
                label = steered_label(name, method, particles)
                scores[label], images[label], compute[label] = score_steered(
                    pipe, label, method, particles, prompts, clients, steer_client, settings, grid_pairs, sampling
                )
                rows[label] = {"model": name, "method": method, "particles": particles}

    try:
        if settings.include_base:
            sample_model("base")
        for name, path in runs.items():
            pipe.load_lora_weights(str(path))
            try:
                sample_model(name)
            finally:
                pipe.unload_lora_weights()
    finally:
        for client in [*clients.values(), *([steer_client] if steer_client else [])]:
            client.close()
    for label, row in rows.items():
        if row["method"] != "none":
            trained[label] = trained.get(row["model"]) or steer_reward
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
        "off_target": {name: off_target_change(metrics, name, trained.get(name)) for name in scores if name != "base"}
        if settings.include_base
        else {},
        "samples": [
            {
                "prompt": p,
                "prompt_index": i,
                "seed": s,
                **{
                    label: {n: json_float(v[n][i * settings.seeds + s]) for n in settings.metrics}
                    for label, v in scores.items()
                },
            }
            for i, p in enumerate(prompts)
            for s in range(settings.seeds)
        ],
    }
    if settings.steer:
        report["steering"] = {
            "reward": steer_reward,
            "methods": settings.steer,
            "particles": settings.particles,
            "potential": settings.potential,
            "lam": settings.lam,
            "resample_every": settings.resample_every,
        }
        report["rows"], report["compute"] = rows, compute
        report["training_compute"] = {name: training_compute(path) for name, path in runs.items()}
    settings.out.mkdir(parents=True, exist_ok=True)
    if settings.steer:
        save_compute_plot(settings.out / "compute.png", report, steer_reward)
    (settings.out / "eval.json").write_text(json.dumps(strict_json(report), indent=2))
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
