"""Typed run configuration: YAML file or preset name, `--set key=value` overrides, clear errors."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from learner.algorithms import ALGORITHMS
from learner.algorithms.base import Algorithm
from rewards_service.client import RetryPolicy, RewardClientConfig
from rollout.settings import LoraSettings

PRESETS = tuple(
    sorted(
        path.name.removesuffix(".yaml")
        for path in (resources.files("rlcm.config") / "presets").iterdir()
        if path.name.endswith(".yaml")
    )
)
DEFAULT_PRESET = "tiny-cpu"


def toy_presets() -> dict[str, str]:
    """Registered algorithm -> its laptop toy preset (the first `*tiny-cpu` preset whose `algorithm` it is), in
    registry order; algorithms without one are left out."""
    found: dict[str, str] = {}
    for preset in (p for p in PRESETS if p.endswith("tiny-cpu")):
        found.setdefault(load_config(preset).algorithm, preset)
    return {name: found[name] for name in ALGORITHMS if name in found}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Strict):
    name: str = Field(
        "tiny",
        description="'tiny' / 'tiny-ddim' (toys built from configs: LCM / Stable Diffusion), a hub id, or a local "
        "diffusers folder",
    )
    seed: int = Field(0, description="seed of the toy model's random weights")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    lora: LoraSettings = Field(default_factory=LoraSettings)
    compile: bool = Field(
        False,
        description="torch.compile each UNet block (regional) in rollout actors and learners: faster steps on a GPU "
        "after a one-time compile (about a minute per process for the SD1.5 UNet); see docs/performance.md",
    )
    channels_last: bool = Field(
        False, description="UNet weights and activations in channels-last layout (faster convolutions on GPUs)"
    )


class SamplingConfig(Strict):
    num_steps: int = Field(8, ge=2, description="H, the LCM inference steps; training needs H >= 2")
    original_inference_steps: int = Field(50, ge=1)
    guidance_scale: float = Field(8.0, ge=1.0)
    batch_size: int = Field(4, ge=1, description="images per rollout call (per GPU)")
    batches_per_epoch: int = Field(10, ge=1, description="rollout calls per epoch per rollout actor")
    height: int | None = Field(None, ge=8)
    width: int | None = Field(None, ge=8)


class PromptConfig(Strict):
    source: Literal["imagenet_animals", "simple_animals", "animals_activities"] = "imagenet_animals"
    limit: int | None = Field(None, ge=1, description="use only the first N prompts")


class RewardConfig(Strict):
    """Which reward scores the images and how the driver reaches it (see rewards_service.client)."""

    name: str = Field(
        "jpeg_compressibility",
        description="reward name (jpeg_compressibility, aesthetic, composite, ...); ROCM: a differentiable reward the "
        "learner backpropagates through",
    )
    monitor: str | None = Field(
        None,
        description="ROCM: the reward the rollout actors' held-out samples are scored with through the reward client "
        "(default: `name`)",
    )
    backend: Literal["local", "serve", "http"] = Field(
        "local", description="local: scorer in a Ray task; serve: the running Serve app's handle; http: the HTTP API"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="scorer options (local backend only)")
    app_name: str = Field("rewards", description="Serve application name (serve backend)")
    url: str = Field("http://127.0.0.1:8000", description="service URL (http backend)")
    token_env: str = Field(
        "RLCM_REWARDS_TOKEN", description="environment variable holding the bearer token (http backend)"
    )
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    timeout_s: float = Field(
        600.0,
        gt=0,
        description="how long the driver waits for one batch's score, retries included (serve: also for a lost "
        "replica's replacement)",
    )
    num_cpus: float = Field(0.25, ge=0, description="CPUs reserved by each scoring task")

    def client_config(self, reward: str | None = None) -> RewardClientConfig:
        """How to reach `reward` (default: `name`); `options` belong to `name`, another reward gets its defaults."""
        token = os.environ.get(self.token_env) if self.backend == "http" else None
        reward = reward or self.name
        return RewardClientConfig(
            reward=reward,
            backend="in_process" if self.backend == "local" else self.backend,
            options=self.options if reward == self.name else {},
            app_name=self.app_name,
            url=self.url,
            token=token,
            retry=self.retry,
            max_concurrency=1,
            replica_wait_s=self.timeout_s,  # serve: a lost replica's call waits for Serve's replacement this long
            replica_wait_key="reward.timeout_s",
        )


class StatTrackingConfig(Strict):
    buffer_size: int = Field(16, ge=1)
    min_count: int = Field(16, ge=1)


class ResourcesConfig(Strict):
    num_rollout_actors: int = Field(1, ge=1)
    num_learners: int = Field(1, ge=1)
    rollout_gpus: float = Field(0.0, ge=0)
    learner_gpus: float = Field(0.0, ge=0)
    rollout_cpus: float = Field(1.0, ge=0)
    learner_cpus: float = Field(1.0, ge=0)


class ScaleOutConfig(Strict):
    """How rollouts, rewards and learning overlap, and how rollout actors survive failures."""

    mode: Literal["sync", "async"] = Field(
        "sync", description="sync: on-policy epochs (Algorithm 1); async: rollouts go on while the learner trains"
    )
    max_staleness: int = Field(
        1, ge=0, description="async: drop trajectories more than k policy versions behind the learner"
    )
    max_inflight_per_actor: int = Field(2, ge=1, description="rollout batches queued per actor (backpressure)")
    buffer_batches: int | None = Field(
        None, ge=1, description="trajectory buffer bound in batches (default: 2 updates' worth)"
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    rollout_max_restarts: int = Field(3, ge=-1, description="Ray restarts of a crashed rollout actor (-1: unlimited)")
    rollout_max_task_retries: int = Field(2, ge=-1, description="Ray retries of a batch whose actor crashed")
    learner_max_restarts: int = Field(
        2,
        ge=0,
        description="rebuild the learner group from the newest checkpoint this many times when a learner dies (e.g. "
        "its node is lost)",
    )
    learner_backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="torch.distributed backend of the learner group"
    )
    control_poll_s: float = Field(1.0, gt=0, description="how often the driver reads the scale controller")
    placement_timeout_s: float = Field(
        600.0, gt=0, description="give up (naming the resources keys) if Ray cannot place the actors by then"
    )
    call_timeout_s: float = Field(
        3600.0,
        gt=0,
        description="give up (naming the keys and the free resources) on a rollout batch or learner update that has "
        "not returned by then",
    )


class FaultConfig(Strict):
    """Fault and latency injection for tests and benchmarks (off by default)."""

    rollout_crash_after_batches: int | None = Field(
        None, ge=1, description="rollout actor 0 exits after K batches (once)"
    )
    reward_latency_s: float = Field(0.0, ge=0, description="extra seconds added to every reward call")
    invalid_reward_epochs: list[int] = Field(
        default_factory=list, description="every reward of these epochs comes back invalid"
    )
    nan_loss_epochs: list[int] = Field(
        default_factory=list,
        description="RLCM: the learner's loss is NaN in these epochs (its advantages are poisoned)",
    )


class RunConfig(Strict):
    epochs: int = Field(100, ge=1)
    seed: int = 0
    save_every: int = Field(10, ge=1, description="checkpoint every N epochs (and at the end)")
    sample_grid_every: int = Field(5, ge=1)
    torch_threads: int | None = Field(None, ge=1)
    max_skipped_updates: int = Field(
        3, ge=1, description="stop after this many consecutive epochs without a valid reward"
    )
    max_nonfinite_updates: int = Field(
        3,
        ge=1,
        description="stop after this many consecutive updates whose every optimizer step had a non-finite loss or "
        "gradient (each is skipped)",
    )
    tensorboard: bool = Field(
        True, description="write TensorBoard event files (scalars, sample grids) to <output>/tensorboard"
    )
    wandb: bool = Field(False, description="also log to Weights & Biases (pip install 'rlcm[wandb]')")
    wandb_project: str = "rlcm"
    plots: bool = Field(True, description="redraw <output>/plots/*.png after every epoch")


class _TrainConfig(Strict):
    """The whole run; every section is typed and unknown keys are errors. The algorithm's own section
    (`train` for rlcm, `rocm` for rocm, ...) is added per registered algorithm below; another algorithm's
    section is an error."""

    algorithm: Literal[tuple(ALGORITHMS)] = Field(
        "rlcm", description="; ".join(f"{name}: {algorithm.optimizes}" for name, algorithm in ALGORITHMS.items())
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    prompts: PromptConfig = Field(default_factory=PromptConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    stat_tracking: StatTrackingConfig = Field(default_factory=StatTrackingConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    scaleout: ScaleOutConfig = Field(default_factory=ScaleOutConfig)
    faults: FaultConfig = Field(default_factory=FaultConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="before")
    @classmethod
    def _own_section_only(cls, data: Any) -> Any:
        """Another algorithm's options are an error naming the key; the algorithm's own section defaults to {}."""
        if not isinstance(data, dict) or data.get("algorithm", "rlcm") not in ALGORITHMS:
            return data
        algorithm = ALGORITHMS[data.get("algorithm", "rlcm")]
        for other in ALGORITHMS.values():
            value = data.get(other.section)
            if other.section != algorithm.section and value not in (None, {}):
                key = f"{other.section}.{next(iter(value))}" if isinstance(value, dict) else other.section
                raise ValueError(
                    f"{key}: an option of algorithm {other.name}, but algorithm is {algorithm.name} (its options live "
                    f"under {algorithm.section}.*); remove it or set algorithm={other.name}"
                )
        return {**data, algorithm.section: data.get(algorithm.section) or {}}

    @model_validator(mode="after")
    def _check_algorithm(self) -> _TrainConfig:
        self.algo.check_model(self)
        self.algo.check(self)
        return self

    @property
    def algo(self) -> type[Algorithm]:
        """The declaration of the configured algorithm (`learner.algorithms.ALGORITHMS`)."""
        return ALGORITHMS[self.algorithm]

    @property
    def settings(self) -> BaseModel:
        """The configured algorithm's settings section."""
        return getattr(self, self.algo.section)

    @property
    def samples_per_epoch(self) -> int:
        return self.sampling.batch_size * self.batches_per_update

    @property
    def optimizer_steps_per_epoch(self) -> int:
        """Optimizer steps of one learner per epoch (for the linear learning-rate schedule)."""
        return self.algo.optimizer_steps_per_epoch(self)

    @property
    def batches_per_update(self) -> int:
        """Rollout batches per update; fixed by the configured actor count, even when actors are added later."""
        return self.sampling.batches_per_epoch * self.resources.num_rollout_actors


TrainConfig = create_model(
    "TrainConfig",
    __base__=_TrainConfig,
    __doc__=_TrainConfig.__doc__,
    **{
        a.section: (a.settings | None, Field(None, description=f"settings of algorithm {a.name}"))
        for a in ALGORITHMS.values()
    },
)


class ConfigError(ValueError):
    """A configuration problem, phrased as what to fix."""


def preset_path(name: str) -> Path:
    return Path(str(resources.files("rlcm.config") / "presets" / f"{name}.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (model, sampling, ...), got {type(data).__name__}")
    return data


def _apply_override(data: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value (e.g. train.learning_rate=3e-4), got {assignment!r}")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set key {key!r} is malformed; use dotted names like sampling.num_steps")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {part!r} is a value, not a section")
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(
            f"--set {key}: the value {raw!r} is not valid YAML ({problem}); quote it if it is text, e.g. {key}='{raw}'"
        ) from None


def _format_validation_error(error: ValidationError, path: Path, overrides: dict[str, str]) -> str:
    """One line per problem: the dotted key, what is wrong, and whether the value came from --set or the file."""
    lines = ["invalid configuration:"]
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = "unknown key; check the spelling or remove it" if item["type"] == "extra_forbidden" else item["msg"]
        message = message.removeprefix("Value error, ")
        if not item["loc"] and ": " in message:  # a cross-field check names its key first
            where, message = message.split(": ", 1)
        origin = next(
            (
                f"--set {k}={v}"
                for k, v in overrides.items()
                if k == where or k.startswith(where + ".") or where.startswith(k + ".") or k in message
            ),
            str(path),
        )
        lines.append(f"  {where}: {message} (from {origin})")
    return "\n".join(lines)


def load_config(config: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML file or a preset name (default: the tiny CPU demo) and apply `key=value` overrides."""
    source = config or DEFAULT_PRESET
    path = preset_path(str(source)) if str(source) in PRESETS else Path(source)
    if not path.is_file():
        raise ConfigError(f"config {str(source)!r} is neither a file nor a preset; presets: {', '.join(PRESETS)}")
    data = _read_yaml(path)
    applied = {}
    for assignment in overrides or []:
        _apply_override(data, assignment)
        key, value = assignment.split("=", 1)
        applied[key.strip()] = value
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error, path, applied)) from None


def with_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """`config` with `key=value` overrides applied and validated as `load_config` does (its errors, as ConfigError)."""
    data = yaml.safe_load(dump_config(config))
    for assignment in overrides:
        _apply_override(data, assignment)
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(
            _format_validation_error(error, Path("the configuration"), dict(o.split("=", 1) for o in overrides))
        ) from None


def dump_config(config: TrainConfig) -> str:
    """The resolved configuration as YAML, with the configured algorithm's section only."""
    others = {a.section for a in ALGORITHMS.values()} - {config.algo.section}
    return yaml.safe_dump(config.model_dump(mode="json", exclude=others), sort_keys=False)
