"""What an evaluation reads: its prompts, the runs' checkpoints and trained metrics, a reward client per metric."""

from __future__ import annotations

from pathlib import Path

from rewards_service.client import HttpRewardClient, InProcessRewardClient, RewardClient
from rewards_service.registry import REWARD_NAMES, build_scorer
from rlcm.runs.checkpoint_record import read_record

LOCAL_METRICS = tuple(n for n in REWARD_NAMES if n != "composite")
PROMPT_PRESETS = ("imagenet_animals", "simple_animals", "animals_activities")


def read_prompts(source: str, limit: int | None = None, offset: int = 0) -> list[str]:
    """A file with one prompt a line, or a preset of `rlcm.config.prompts.load_prompts`; `offset` skips the first ones
    (e.g. the prompts a run trained on), `limit` caps the count."""
    from rlcm.config.prompts import load_prompts

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


def training_compute(lora: Path) -> dict | None:
    """What training checkpoint `lora` (<run>/checkpoints/epoch-NNNN) cost, from its run's metrics.jsonl up to epoch
    NNNN: epochs, samples trained on (samples_seen), their rollout UNet evaluations (samples × the run's
    sampling.num_steps) and the wall-clock seconds; None without metrics."""
    import json

    import yaml

    run, name = lora.parent.parent, lora.name
    metrics = run / "metrics.jsonl"
    if not metrics.is_file() or not name.startswith("epoch-"):
        return None
    last = int(name.removeprefix("epoch-"))
    rows = []
    for line in metrics.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a half-written last line
            continue
        if row.get("epoch", last + 1) <= last:
            rows.append(row)
    if not rows:
        return None
    config = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    steps = ((config or {}).get("sampling") or {}).get("num_steps")
    samples = int(rows[-1].get("samples_seen", 0))
    return {
        "epochs": len(rows),
        "samples": samples,
        "rollout_unet_evals": samples * steps if steps else None,
        "wall_s": float(sum(row.get("time_epoch_s", 0.0) for row in rows)),
    }


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
