"""The sign test: does what a toy preset learns come from its reward? Train with r, with −r and with a random control.

A run is the driver's sync epoch loop in this process (no Ray): the algorithm's learner built from the preset's spec
(as the learner actors build it), a rollout worker with the preset's sampler, the epoch's batches as the scheduler
draws them (`epoch_jobs`) and the preset's scorer. The learner sees one of three rewards:

    r        the preset's reward
    −r       its negation
    random   u ~ N(0, 1) per sample, independent of the image (seeded by (seed, epoch)): the control

The final policy is judged by the true reward r on held-out prompts (ones the run never trains on) with fixed noises.
What the learner learns *from its reward* is the gain over the control, Δ = mean(r-run) − mean(control-run), with
SE = √(s²_r/n_r + s²_c/n_c) over seeds (s²: sample variance of a condition's per-seed held-out rewards).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from learner.algorithms import ALGORITHMS
from rlcm.config.schema import toy_presets

MODES = ("r", "-r", "random")


def sign_tested_toys() -> dict[str, str]:
    """Every registered algorithm that learns from rollouts (a black-box reward) -> its toy preset: the algorithms
    the sign test covers."""
    return {name: preset for name, preset in toy_presets().items() if not ALGORITHMS[name].source.learners_sample}


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


class ToyRun:
    """One in-process training run of a rollout algorithm's preset with the learner seeing `mode`'s reward."""

    def __init__(self, config, mode: str, worker=None):
        from learner.actor import build_learner
        from rewards_service.registry import build_scorer
        from rollout.precision import DTYPES

        if config.algo.source.learners_sample:
            raise ValueError(f"the sign test needs a rollout algorithm; {config.algo.name} samples its own chains")
        if mode not in MODES:
            raise ValueError(f"unknown reward mode {mode!r}; use one of {MODES}")
        self.config, self.mode, self.seed = config, mode, config.run.seed
        common = dict(
            model=config.model.name,
            lora=config.model.lora,
            seed=self.seed,
            model_seed=config.model.seed,
            dtype=DTYPES[config.model.dtype],
        )
        self.learner = build_learner(config.algo.learner_spec(config, common))
        self.worker = worker or rollout_worker(config)
        self.scorer = build_scorer(config.reward.name)
        self.epoch = 0

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


def rollout_worker(config):
    """A rollout worker with the preset's sampler (as `cluster.run_actors.rollout_pool` builds it)."""
    from rollout.precision import DTYPES
    from rollout.worker import RolloutSpec, RolloutWorker

    s, algo = config.sampling, config.algo
    return RolloutWorker(
        RolloutSpec(
            model=config.model.name,
            lora=config.model.lora,
            num_steps=s.num_steps,
            guidance_scale=s.guidance_scale,
            height=s.height,
            width=s.width,
            original_inference_steps=s.original_inference_steps,
            model_seed=config.model.seed,
            dtype=DTYPES[config.model.dtype],
            noise_group_size=algo.noise_group_size(config),
            eta=algo.eta(config),
        )
    )


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
    run = ToyRun(config, mode, worker)
    start = {"initial": run.evaluate(held_out, noises)} if initial else {}
    curve = [run.train_epoch() for _ in range(epochs)]
    return {"mode": mode, "seed": run.seed, "curve": curve, "held_out": run.evaluate(held_out, noises), **start}
