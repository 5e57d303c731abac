"""What `rlcm plan` tells a user to change when an actor does not fit its GPU.

Each line is one of: `--set KEY=VALUE` pairs that the config accepts (validated as `load_config` does,
cross-field checks included) and that make that actor fit when planned again; for a reward deployment, the
`num_gpus` its Serve config should ask (no training key sizes it); or, where no setting makes it fit on this
GPU, the GPU kinds it fits on as configured. The knobs are the algorithm's (`Algorithm.memory_settings`), then a
whole GPU for an actor that shares one; none changes what an optimizer step averages over.
"""

from __future__ import annotations

from typing import Any

from rlcm.config.schema import ConfigError, TrainConfig, with_overrides
from rlcm.planning.assembly import RESERVED, Actor, assemble
from rlcm.planning.gpus import GPU, GPUS, serve_share

SERVE_FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def _smaller_rollout_batches(config: TrainConfig) -> list[list[str]]:
    """Fewer images per rollout call, more calls per epoch: the samples per epoch stay as they are."""
    s = config.sampling
    samples = s.batch_size * s.batches_per_epoch
    return [
        [f"sampling.batch_size={b}", f"sampling.batches_per_epoch={samples // b}"]
        for b in range(s.batch_size - 1, 0, -1)
        if samples % b == 0
    ]


def _then_whole_gpu(key: str, fraction: float, changes: list[list[str]]) -> list[list[str]]:
    if not 0 < fraction < 1:
        return changes
    whole = [f"resources.{key}=1"]
    return changes + [whole] + [whole + change for change in changes]


def candidates(config: TrainConfig, role: str) -> list[list[str]]:
    """`--set` lists that lower `role`'s memory on its GPU, most preferred first."""
    r = config.resources
    if role == "rollout actor":
        return _then_whole_gpu("rollout_gpus", r.rollout_gpus, _smaller_rollout_batches(config))
    if role.startswith("learner"):
        return _then_whole_gpu("learner_gpus", r.learner_gpus, config.algo.memory_settings(config))
    return _smaller_rollout_batches(config)  # a reward deployment scores one rollout batch per request


def _fitting(config: TrainConfig, gpu: GPU, role: str, changes: list[str]) -> Actor | None:
    """`role` after `changes`, if the config accepts them and it then fits."""
    try:
        changed = with_overrides(config, changes)
    except ConfigError:
        return None
    actor = next((a for a in assemble(changed, gpu).actors if a.role == role), None)
    return actor if actor is not None and actor.fits else None


def _serve_fraction(actor: Actor, gpu: GPU) -> float | None:
    """The smallest GPU share a Serve config may ask at which `actor` fits on `gpu`."""
    return next((f for f in SERVE_FRACTIONS if actor.memory_bytes <= int(gpu.memory_bytes * f) - RESERVED), None)


def advise(config: TrainConfig, gpu: GPU, actors: list[Actor]) -> list[dict[str, Any]]:
    """One item per actor that does not fit: `set` (KEY=VALUE strings, empty when no setting helps), `fits_on`
    (GPU kinds where it fits as configured, when `set` is empty), `serve_num_gpus` (reward deployments) and `text`."""
    out = []
    for a in actors:
        if a.fits:
            continue
        item: dict[str, Any] = {
            "role": a.role,
            "memory_bytes": a.memory_bytes,
            "budget_bytes": a.budget_bytes,
            "set": [],
            "fits_on": [],
        }
        need = f"{a.role} needs {_gib(a.memory_bytes)} of {_gib(a.budget_bytes)} on {gpu.kind}"
        fixed = next(((c, f) for c in candidates(config, a.role) if (f := _fitting(config, gpu, a.role, c))), None)
        fraction = _serve_fraction(a, gpu) if a.role.startswith("reward deployment") else None
        if fixed:
            changes, after = fixed
            item["set"] = changes
            item["text"] = (
                f"{need}: {' '.join('--set ' + c for c in changes)} (then {_gib(after.memory_bytes)} of "
                f"{_gib(after.budget_bytes)})"
            )
        elif fraction:
            source = serve_share(config.reward.name)[2]
            item["serve_num_gpus"] = fraction
            item["text"] = f"{need}: no --set sizes it; set num_gpus: {fraction:g} for {config.reward.name} in {source}"
        else:
            item["fits_on"] = [
                g.kind for g in GPUS.values() if any(x.role == a.role and x.fits for x in assemble(config, g).actors)
            ]
            where = (
                f"as configured it fits on {', '.join(item['fits_on'])}"
                if item["fits_on"]
                else "it fits on no GPU kind rlcm plan knows"
            )
            item["text"] = f"{need}: no --set makes it fit on {gpu.kind}; {where}"
        out.append(item)
    return out
