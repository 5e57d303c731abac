"""The sign test: does what a toy preset learns come from its reward? Train with r, with −r and with a random control.

A run is the driver's sync epoch loop in this process (no Ray): the algorithm's learner built from the preset's spec
(as the learner actors build it). Rollout algorithms (`ToyRun`) train on a rollout worker's batches, as the scheduler
draws them (`epoch_jobs`), scored by the preset's scorer; the learner sees one of three rewards:

    r        the preset's reward
    −r       its negation
    random   u ~ N(0, 1) per sample, independent of the image (seeded by (seed, epoch)): the control

First-order algorithms (`FirstOrderToyRun`) sample their own chains and ascend a differentiable reward: r, −r, or as
the control ⟨w, image⟩ with a fresh w ~ N(0, I) per call (`RandomDirection`): a gradient that carries no information
about the image's reward and averages to zero, so the weights move about as far as under r with nothing to follow.

The final policy is judged by the true reward r on held-out prompts (ones the run never trains on) with fixed noises.
What the learner learns *from its reward* is the gain over the control, Δ = mean(r-run) − mean(control-run), with
SE = √(s²_r/n_r + s²_c/n_c) over seeds (s²: sample variance of a condition's per-seed held-out rewards).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

MODES = ("r", "-r", "random")


class Negated(torch.nn.Module):
    """−r for a differentiable reward r."""

    def __init__(self, reward: torch.nn.Module):
        super().__init__()
        self.reward = reward

    def forward(self, images: torch.Tensor, prompts=None) -> torch.Tensor:
        return -self.reward(images, prompts)


class RandomDirection(torch.nn.Module):
    """The first-order control: ⟨w, image⟩ (mean over pixels) with a fresh w ~ N(0, I) at every call, seeded."""

    def __init__(self, seed: int):
        super().__init__()
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, images: torch.Tensor, prompts=None) -> torch.Tensor:
        w = torch.randn(images.shape[1:], generator=self.generator).to(images)
        return (images * w).mean(dim=(1, 2, 3))


def learner_reward(mode: str, factory, seed: int) -> torch.nn.Module:
    """The differentiable reward a first-order learner ascends under `mode` (`factory()` builds r)."""
    if mode == "r":
        return factory()
    if mode == "-r":
        return Negated(factory())
    if mode == "random":
        return RandomDirection(seed)
    raise ValueError(f"unknown reward mode {mode!r}; use one of {MODES}")


def learner_rewards(mode: str, true: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """What the learner sees under `mode` for samples whose true rewards are `true`."""
    if mode == "r":
        return true
    if mode == "-r":
        return -true
    if mode == "random":
        return np.random.default_rng([seed, epoch, 99]).standard_normal(len(true))
    raise ValueError(f"unknown reward mode {mode!r}; use one of {MODES}")


@dataclass
class Gain:
    """Δ = mean(a) − mean(b) over seeds and its standard error √(s²_a/n_a + s²_b/n_b)."""

    delta: float
    se: float

    @property
    def z(self) -> float:
        return self.delta / self.se if self.se > 0 else math.copysign(math.inf, self.delta) if self.delta else 0.0

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """Normal-approximation confidence interval Δ ± z_{(1+level)/2}·SE."""
        from statistics import NormalDist

        half = NormalDist().inv_cdf(0.5 + level / 2) * self.se
        return self.delta - half, self.delta + half


def gain(a: list[float], b: list[float]) -> Gain:
    """Gain of condition a over condition b (each: one held-out reward per seed, ≥ 2 seeds)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need >= 2 seeds per condition for a standard error, got {len(a)} and {len(b)}")
    return Gain(float(a.mean() - b.mean()), float(math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))))


def held_out_prompts(config, count: int) -> list[str]:
    """`count` prompts of the preset's source that its training set (the first `prompts.limit`) never contains."""
    from rlcm.config.prompts import load_prompts

    train = load_prompts(config.prompts.source, config.prompts.limit)
    held = [p for p in load_prompts(config.prompts.source) if p not in set(train)][:count]
    if len(held) < count:
        raise ValueError(
            f"prompts.source {config.prompts.source!r} has only {len(held)} prompts outside the training set"
        )
    return held


def _learner_and_worker(config, worker, reward_mode: str | None = None):
    """The preset's learner, a rollout worker, the preset's scorer; with `reward_mode`, a first-order learner ascends
    that mode's reward (`learner_reward`)."""
    import dataclasses

    from cluster.run_actors import learner_spec
    from learner.actor import build_learner
    from rewards_service.registry import build_scorer

    spec = learner_spec(config)
    if reward_mode is not None:
        factory = functools.partial(learner_reward, reward_mode, spec.reward_factory, config.run.seed)
        spec = dataclasses.replace(spec, reward_factory=factory)
    learner = build_learner(spec)
    return learner, worker or rollout_worker(config), build_scorer(config.reward.name)


class ToyRun:
    """One in-process training run of a rollout algorithm's preset with the learner seeing `mode`'s reward."""

    def __init__(self, config, mode: str, worker=None):
        if config.algo.source.learners_sample:
            raise ValueError(f"ToyRun needs a rollout algorithm; {config.algo.name} samples its own chains")
        if mode not in MODES:
            raise ValueError(f"unknown reward mode {mode!r}; use one of {MODES}")
        self.config, self.mode, self.seed, self.epoch = config, mode, config.run.seed, 0
        self.learner, self.worker, self.scorer = _learner_and_worker(config, worker)

    def train_epoch(self) -> float:
        """Sample the epoch's batches with the current adapter, score them, update; the batch's mean true reward."""
        from cluster.schedule import epoch_jobs
        from rlcm.config.prompts import load_prompts

        c, algo = self.config, self.config.algo
        load_adapter(self.worker, self.learner.adapter())
        prompts = load_prompts(c.prompts.source, c.prompts.limit)
        jobs = epoch_jobs(
            prompts, self.seed, self.epoch, c.sampling.batch_size, c.batches_per_update, group_size=algo.group_size(c)
        )
        trajectories = [self.worker.sample(job.prompts, job.seed) for job in jobs]
        scores = [self.scorer.score(t.images.permute(0, 2, 3, 1).numpy(), t.prompts) for t in trajectories]
        true, valid = np.concatenate([s.rewards for s in scores]), np.concatenate([s.valid for s in scores])
        seen = np.where(valid, learner_rewards(self.mode, np.where(valid, true, 0.0), self.seed, self.epoch), np.nan)
        self.learner.train_epoch(seen, valid, *trajectories)
        self.epoch += 1
        self.last_batch = (trajectories, true, valid)
        return float(true[valid].mean())

    def evaluate_samples(self, prompts: list[str], noises: int, noise_seed: int = 1234) -> np.ndarray:
        """True reward of the current policy on each of `prompts` × `noises` fixed initial noises."""
        load_adapter(self.worker, self.learner.adapter())
        batch = [p for p in prompts for _ in range(noises)]
        trajectory = self.worker.sample(batch, noise_seed)
        return np.asarray(self.scorer.score(trajectory.images.permute(0, 2, 3, 1).numpy(), batch).rewards)

    def evaluate(self, prompts: list[str], noises: int, noise_seed: int = 1234) -> float:
        """Mean true reward of the current policy on `prompts` × `noises` fixed initial noises."""
        return float(self.evaluate_samples(prompts, noises, noise_seed).mean())


class FirstOrderToyRun(ToyRun):
    """One in-process training run of a first-order algorithm's preset, its learner ascending `mode`'s reward (its
    own chains from the training prompts, λ by the driver's controller); evaluated as `ToyRun`."""

    def __init__(self, config, mode: str, worker=None):
        from learner.algorithms.rocm.lam_controller import controller_for

        if not config.algo.source.learners_sample:
            raise ValueError(f"FirstOrderToyRun needs a first-order algorithm; {config.algo.name} learns from rollouts")
        if mode not in MODES:
            raise ValueError(f"unknown reward mode {mode!r}; use one of {MODES}")
        self.config, self.mode, self.seed, self.epoch = config, mode, config.run.seed, 0
        self.learner, self.worker, self.scorer = _learner_and_worker(config, worker, reward_mode=mode)
        self.lam = controller_for(config.settings) if hasattr(config.settings, "lam") else None

    def train_epoch(self) -> float:
        """One epoch of the learner's own chains; their mean true reward."""
        from rlcm.config.prompts import epoch_prompts, holdout_split, load_prompts

        c = self.config
        train = holdout_split(load_prompts(c.prompts.source, c.prompts.limit), min_held=c.sampling.batch_size)[0]
        prompts = epoch_prompts(train, self.seed, self.epoch, c.algo.prompts_per_epoch(c))
        metrics = self.learner.train_epoch(prompts, *(() if self.lam is None else (self.lam.lam,)))
        if self.lam is not None:
            self.lam.step(metrics["divergence_mean"])
        self.epoch += 1
        samples = self.learner.last_samples
        images = samples.images.permute(0, 2, 3, 1).numpy()
        return float(np.mean(self.scorer.score(images, samples.prompts).rewards))


def toy_run(config, mode: str, worker=None) -> ToyRun:
    """The run of the preset's algorithm family."""
    return (FirstOrderToyRun if config.algo.source.learners_sample else ToyRun)(config, mode, worker)


def rollout_worker(config):
    """A rollout worker with the preset's sampler (as `cluster.run_actors.rollout_pool` builds it)."""
    from cluster.run_actors import rollout_spec
    from rollout.worker import RolloutWorker

    return RolloutWorker(rollout_spec(config))


def load_adapter(worker, adapter) -> None:
    """Give a (shared) rollout worker this adapter even if it held another run's adapter of the same version."""
    from rollout.lora import import_adapter

    import_adapter(worker.pipe.unet, adapter)
    worker.version = adapter.version


def sign_test_run(
    config, mode: str, epochs: int, held_out: list[str], noises: int, worker=None, initial: bool = False
) -> dict:
    """Train `epochs` epochs under `mode`; the training curve (true reward), the final held-out reward (and, with
    `initial`, the untrained policy's)."""
    run = toy_run(config, mode, worker)
    start = {"initial": run.evaluate(held_out, noises)} if initial else {}
    curve = [run.train_epoch() for _ in range(epochs)]
    return {"mode": mode, "seed": run.seed, "curve": curve, "held_out": run.evaluate(held_out, noises), **start}
