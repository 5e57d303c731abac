"""`rlcm train --dry-run`: a preset end to end at its real architectures with random weights, on a laptop.

What changes (and is printed): model and reward backbones become `random:<hub id>` (real architecture,
random weights, built from configs shipped in the package), the frozen base is built in the dtype the preset
gets on a bf16 GPU, images are `resolution` px, 2 epochs, one rollout actor and one learner with small
batches, GPU requests mapped to CPU. What does not change: the algorithm, LoRA targets, divergence, reward
backend (Serve deployments where the preset uses them), checkpointing and every code path between.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlcm.config.schema import ConfigError, TrainConfig
from rollout.samplers import is_toy

RANDOM = "random:"
# Options of each reward that name a model: the dry run points them at random weights of that architecture.
REWARD_MODEL_OPTIONS = {
    "aesthetic": {"clip_model": "openai/clip-vit-large-patch14"},
    "clip_score": {"model": "openai/clip-vit-large-patch14"},
    "pickscore": {"model": "yuvalkirstain/PickScore_v1", "processor": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"},
    "hpsv2": {"checkpoint": "xswu/HPSv2"},
    "llava_bertscore": {"model": "llava-hf/llava-1.5-7b-hf", "bertscore_model": "microsoft/deberta-xlarge-mnli"},
}
SERVE_CONFIGS = {
    "aesthetic": "aesthetic.yaml",
    "llava_bertscore": "llava_bertscore.yaml",
    "jpeg_compressibility": "jpeg.yaml",
    "jpeg_incompressibility": "jpeg.yaml",
}


@dataclass
class DryRunPlan:
    """The scaled-down config, the reward service to deploy (serve backend) and what was changed, in words."""

    config: TrainConfig
    serve: dict[str, Any] | None
    changes: list[str] = field(default_factory=list)


def randomize(options: dict[str, Any], reward: str, changes: list[str]) -> dict[str, Any]:
    """`options` with every model of `reward` replaced by `random:<the same model>`."""
    options = dict(options)
    for key, default in REWARD_MODEL_OPTIONS.get(reward, {}).items():
        value = options.get(key, default)
        options[key] = value if value.startswith(RANDOM) else RANDOM + value
    if reward in REWARD_MODEL_OPTIONS:
        changes.append(f"reward {reward}: " + ", ".join(f"{k}={options[k]}" for k in REWARD_MODEL_OPTIONS[reward]))
    if reward == "llava_bertscore":
        options.pop("gpu_memory_utilization", None)
        options.update(backend="transformers", dtype="bfloat16", max_new_tokens=8)
        changes.append(
            "reward llava_bertscore: vLLM (GPU only) -> transformers backend in bfloat16, 8 new tokens; "
            "LLaVA's language model cut to 2 of its 32 layers (real width 4096)"
        )
    return options


def _serve_config(reward: str, changes: list[str]) -> dict[str, Any]:
    """The preset's Serve application (cluster/serve/<file>) with only `reward`, random models, GPUs mapped to CPU."""
    from importlib import resources

    path = Path(str(resources.files("cluster") / "serve" / SERVE_CONFIGS.get(reward, "")))
    if reward not in SERVE_CONFIGS or not path.is_file():
        raise ConfigError(
            f"reward.backend: serve has no shipped Serve config for {reward!r}; use reward.backend=local for the dry "
            "run"
        )
    app = yaml.safe_load(path.read_text())["applications"][0]["args"]
    entry = next(r for r in app["rewards"] if r["name"] == reward)
    if entry.get("num_gpus"):
        changes.append(f"Serve deployment {reward}: num_gpus {entry['num_gpus']} -> 0 (CPU), num_cpus 0.5")
    entry.update(options=randomize(entry.get("options", {}), reward, changes), num_gpus=0, num_cpus=0.5, num_replicas=1)
    return {"rewards": [entry], "settings": app.get("settings", {})}


def plan_dry_run(config: TrainConfig, resolution: int = 64) -> DryRunPlan:
    """Scale `config` down to this machine, keeping its architectures, algorithm and reward backend."""
    if resolution < 8 or resolution % 8:
        raise ConfigError(
            f"--dry-run-resolution must be a positive multiple of 8 (the VAE downsamples 8x), got {resolution}"
        )
    changes: list[str] = []
    data = config.model_dump(mode="json")
    model = data["model"]
    if not is_toy(model["name"]):
        from rollout.architectures import architecture_dir

        if not model["name"].startswith(RANDOM):
            try:
                architecture_dir(model["name"])
            except ValueError as error:
                raise ConfigError(str(error)) from None
            model["name"] = RANDOM + model["name"]
        changes.append(f"model: {model['name']} (real architecture, random weights)")
    if model["dtype"] == "auto" and not is_toy(model["name"]):
        model["dtype"] = "bfloat16"
        changes.append(
            "model.dtype: auto -> bfloat16 (what the frozen base gets on a bf16 GPU); LoRA and optimizer stay fp32"
        )
    s = data["sampling"]
    batch = max(min(s["batch_size"], 2), config.algo.group_size(config))  # a GRPO group stays within one batch
    changes.append(
        f"sampling: {s['height'] or 'default'} px -> {resolution} px, batch_size {s['batch_size']} -> {batch}, "
        f"batches_per_epoch {s['batches_per_epoch']} -> 1 (num_steps {s['num_steps']} kept)"
    )
    s.update(height=resolution, width=resolution, batch_size=batch, batches_per_epoch=1)
    r = data["resources"]
    changes.append(
        f"resources: {r['num_rollout_actors']} rollout actor(s) x {r['rollout_gpus']} GPU, {r['num_learners']} "
        f"learner(s) x {r['learner_gpus']} GPU -> 1 rollout actor + 1 learner on CPU (GPU requests mapped to CPU)"
    )
    r.update(
        num_rollout_actors=1, num_learners=1, rollout_gpus=0.0, learner_gpus=0.0, rollout_cpus=0.5, learner_cpus=0.5
    )
    section = config.algo.section
    changes.append(f"{section}: " + config.algo.source.one_update_epoch(data[section], s["batch_size"]))
    if no_people := config.algo.without_people(data[section]):
        changes.append(no_people)
    data["run"].update(epochs=2, save_every=1, sample_grid_every=1, wandb=False)
    data["scaleout"]["placement_timeout_s"] = 120.0
    reward = data["reward"]
    serve = None
    if reward["backend"] == "serve":
        serve = _serve_config(reward["name"], changes)
    elif reward["backend"] == "http":
        raise ConfigError("reward.backend: http needs a running reward service; the dry run supports local and serve")
    else:
        reward["options"] = randomize(reward["options"], reward["name"], changes)
        if (
            config.algo.source.learners_sample
            and reward["name"] in REWARD_MODEL_OPTIONS
            and "dtype" not in reward["options"]
        ):
            reward["options"]["dtype"] = "bfloat16"
            changes.append(
                f"reward {reward['name']}: float32 -> bfloat16 (two copies, learner and monitor scorer, must fit next "
                "to the UNets here)"
            )
    return DryRunPlan(TrainConfig.model_validate(data), serve, changes)


ROLES = {
    "RolloutActor": "rollout actor",
    "Learner": "learner",
    "ServeReplica": "reward deployment",
    "score_images": "reward task",
    "RewardIngress": "serve ingress",
}


class MemoryWatch:
    """Samples this process and its descendants (Ray workers) for role (from the process title) and peak RSS (VmHWM)."""

    def __init__(self, period_s: float = 0.5) -> None:
        import psutil

        self.psutil, self.period_s = psutil, period_s
        self.roles: dict[int, str] = {}
        self.peaks: dict[int, int] = {}
        self.total_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.sample()
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            self.sample()

    @staticmethod
    def _hwm(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def sample(self) -> None:
        me = self.psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                title, rss = " ".join(proc.cmdline())[:200], proc.memory_info().rss
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                continue
            total += rss
            role = "driver" if proc.pid == me.pid else next((v for k, v in ROLES.items() if k in title), None)
            if role and proc.pid not in self.roles:
                self.roles[proc.pid] = role
            if proc.pid in self.roles:
                self.peaks[proc.pid] = max(self.peaks.get(proc.pid, 0), self._hwm(proc.pid) or rss)
        self.total_peak = max(self.total_peak, total)

    def by_role(self) -> dict[str, int]:
        """Peak RSS per role (the largest process of that role)."""
        out: dict[str, int] = {}
        for pid, role in self.roles.items():
            out[role] = max(out.get(role, 0), self.peaks.get(pid, 0))
        return out


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def run_dry_run(
    name: str, config: TrainConfig, output_dir: Path, resolution: int = 64, verbose: bool = False
) -> dict[str, Any]:
    """Run the dry run of `config` and print its report; returns the figures (for scripts and tests)."""
    from rlcm.commands.checks import validate_before_ray

    plan = plan_dry_run(config, resolution)
    print(
        f"dry run of {name}: real architectures, random weights, {resolution} px, 2 epochs. Changed for this machine:"
    )
    for change in plan.changes:
        print(f"  - {change}")
    validate_before_ray(plan.config, joining_cluster=False)
    import ray

    from cluster.ray_setup import init_ray
    from cluster.trainer import Trainer
    from rlcm.runs.folder import OutputDir

    OutputDir(output_dir).prepare(False)
    start = time.perf_counter()
    with MemoryWatch() as watch:
        init_ray("local", num_cpus=8, quiet=not verbose, log_to_driver=verbose, include_dashboard=False)
        try:
            if plan.serve:
                from rewards_service.serve import RewardServiceConfig, run_service

                service = RewardServiceConfig.model_validate({**plan.serve, "app_name": plan.config.reward.app_name})
                run_service(service)
            setup_start = time.perf_counter()
            trainer = Trainer(plan.config, output_dir)
            setup_s = time.perf_counter() - setup_start
            try:
                rows = trainer.run()
                watch.sample()
            finally:
                trainer.shutdown()
        finally:
            if plan.serve:
                from ray import serve

                serve.shutdown()
            ray.shutdown()
    figures = {
        "preset": name,
        "resolution": resolution,
        "total_s": time.perf_counter() - start,
        "setup_s": setup_s,
        "epochs": rows,
        "peak_bytes": watch.by_role(),
        "total_peak_bytes": watch.total_peak,
    }
    print_report(figures)
    what = "full architecture" if plan.config.model.name.startswith(RANDOM) else f"its model {plan.config.model.name!r}"
    print(f"dry run OK: {name} ran end to end at {what} (random weights, {resolution} px)")
    return figures


def print_report(figures: dict[str, Any]) -> None:
    print(f"  setup (actors load their models): {figures['setup_s']:.1f} s")
    for row in figures["epochs"]:
        phases = ", ".join(
            f"{k.removeprefix('time_').removesuffix('_s')} {row[k]:.1f} s"
            for k in ("time_rollout_s", "time_reward_s", "time_train_s", "time_sync_s", "time_epoch_s")
            if k in row
        )
        print(f"  epoch {row['epoch']}: {phases}; reward_mean {row['reward_mean']:.4f}")
    for role, peak in sorted(figures["peak_bytes"].items()):
        print(f"  peak memory {role}: {_gb(peak)}")
    print(
        f"  peak memory all processes together: {_gb(figures['total_peak_bytes'])}; total time "
        f"{figures['total_s']:.1f} s"
    )
