"""What an algorithm declares to the rest of the system (importable without torch: config checks stay fast).

An algorithm is one module (or folder) in `learner/algorithms/` and one line in `learner.algorithms.ALGORITHMS`.
It names its settings section (a pydantic model; keys of another algorithm's section are config errors), where
an epoch's samples come from (`source`: `FromRollouts()`, the rollout actors' trajectories, scored by the reward
service; `FromLearners()`, chains the learners sample themselves with grad, while the rollout actors sample
held-out prompts for monitoring), which sampler it trains (`sampler`: the LCM policy, or DDIM for DDPO; the model
must be of that kind), how to build its learner, what its epoch line shows and which series its diagnostics plot draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from learner.ppo.calls import UpdateCalls, update_calls
from rollout.samplers import EXAMPLES, LCM, sampler_of

if TYPE_CHECKING:
    from rlcm.config.schema import TrainConfig


class SampleSource:
    """Where an epoch's training samples come from. `learners_sample`: the learners sample their own chains with grad
    from the training prompts and backpropagate through a differentiable reward (the driver splits the prompts among
    them; the rollout actors only sample held-out prompts scored by `reward.monitor`; `rlcm plan` costs backprop
    through a chain; no async mode, no sign test); otherwise they run PPO over the rollout actors' scored
    trajectories. `reward_label`: the plot/row label of the learners' reward. `one_update_epoch` shrinks a settings
    section to one optimizer step per epoch (`rlcm train --dry-run`).
    """

    learners_sample: ClassVar[bool]
    reward_label: ClassVar[str]

    def one_update_epoch(self, section: dict[str, Any], batch_size: int) -> str:
        """Set `section` (a settings section as a dict) to one optimizer step per epoch of rollout batches of
        `batch_size`; returns what changed, for the dry run's list."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class FromRollouts(SampleSource):
    """The rollout actors' trajectories, scored by the reward service; the learners run PPO over them."""

    learners_sample = False
    reward_label = "reward"

    def one_update_epoch(self, section: dict[str, Any], batch_size: int) -> str:
        section["train_batch_size"] = min(section["train_batch_size"], batch_size)
        section["grad_accum_steps"], section["inner_epochs"] = batch_size // section["train_batch_size"], 1
        return (
            f"train_batch_size {section['train_batch_size']}, grad_accum_steps {section['grad_accum_steps']}, "
            "inner_epochs 1 (one PPO step per epoch)"
        )


class FromLearners(SampleSource):
    """Chains the learners sample themselves with grad from training prompts (first-order); the rollout actors
    sample held-out prompts for monitoring only."""

    learners_sample = True
    reward_label = "trained reward"

    def one_update_epoch(self, section: dict[str, Any], batch_size: int) -> str:
        section.update(batch_size=1, grad_accum_steps=1, updates_per_epoch=1)
        return (
            f"batch_size 1, grad_accum_steps 1, updates_per_epoch 1 (one prompt per epoch) (divergence "
            f"{section['divergence']}, gradient_checkpointing {section['gradient_checkpointing']} kept)"
        )


@dataclass(frozen=True)
class TrainingCalls:
    """The UNet calls one learner update makes per trained sample (`rlcm plan` costs them)."""

    with_grad: int  # training calls with grad (forward + backward)
    without_grad: int  # frozen forwards at the same inputs (π_old, θ_old, the base), no grad
    images_per_call: int  # UNet images per call and sample (classifier-free guidance: 2)
    extra_adapters: int = 0  # LoRA copies held beside the trained one (fp32 weights, no grads)


@dataclass(frozen=True)
class Labelling:
    """People judge a run's samples on the labelling page (`rlcm.labelling`), through the run folder's judgement
    store: its staleness bound in policy versions, and the page `rlcm train` serves beside the run (host, port,
    token; None: `rlcm label` serves it)."""

    staleness: int | None
    serve: Any | None


class Algorithm:
    """A training algorithm's declaration; the driver, config, validation and progress ask it, never its name."""

    name: ClassVar[str]
    title: ClassVar[str]  # as its paper writes it ("DRaFT"): labels in `rlcm plan`
    section: ClassVar[str]  # the config section holding `settings`
    settings: ClassVar[type[BaseModel]]
    source: ClassVar[SampleSource]  # where its samples come from: FromRollouts() or FromLearners()
    sampler: ClassVar[str] = (
        LCM  # the policy it trains (`rollout.samplers`): lcm or ddim; the model must be of that kind
    )
    summary: ClassVar[
        tuple[tuple[str, str, str], ...]
    ] = ()  # (metric, label, format) shown after the reward in the epoch line
    diagnostics: ClassVar[tuple[tuple[str, str], ...]] = ()  # (metric, plot title) of `plots/diagnostics.png`
    # what its update raises for high-reward samples (tests/test_learning.py): "chain", the sampler's
    # Σ_k log π(x_{k+1} | x_k); "denoising", −‖x̂0(x_t, t) − x0‖² on noised copies of the clean sample (ELBO terms)
    likelihood: ClassVar[str] = "chain"
    optimizes: ClassVar[str] = ""  # one line for the README table
    paper: ClassVar[str] = ""

    @classmethod
    def check(cls, config: TrainConfig) -> None:
        """Cross-field checks; raise ValueError("dotted.key: what to fix")."""

    @classmethod
    def check_model(cls, config: TrainConfig) -> None:
        """The model must be one the algorithm's sampler runs (an LCM for lcm, a Stable Diffusion model for ddim)."""
        model = config.model.name
        kind = sampler_of(model)
        if kind is not None and kind != cls.sampler:
            raise ValueError(
                f"model.name: {model!r} is a {kind.upper()} model but algorithm {cls.name} trains the "
                f"{cls.sampler.upper()} sampler; use a {cls.sampler.upper()} model (e.g. {EXAMPLES[cls.sampler]}) or "
                f"an algorithm for {kind.upper()} models"
            )

    @classmethod
    def sampler_for(cls, config: TrainConfig) -> str:
        """The sampler this config trains (`sampler`; an algorithm for either kind answers by the model)."""
        return cls.sampler

    @classmethod
    def reference_calls_per_step(cls, config: TrainConfig) -> int:
        """No-grad UNet calls of the LoRA-free base per trained (sample, step), beside the policy's (`rlcm plan`)."""
        return 0

    @classmethod
    def eta(cls, config: TrainConfig) -> float | None:
        """η of the DDIM sampler the rollout actors use (None: the sampler has none)."""
        return None

    @classmethod
    def labelling(cls, config: TrainConfig) -> Labelling | None:
        """Whether people judge this run's samples (None: no one). If so, its learner spec has a field `judgements`
        that the driver sets to a function opening the run folder's judgement store."""
        return None

    @classmethod
    def without_people(cls, section: dict[str, Any]) -> str | None:
        """Change `section` (the settings as a dict) so that a run waits for no one (`rlcm train --dry-run`);
        returns what changed, or None."""
        return None

    @classmethod
    def learner_spec(cls, config: TrainConfig, common: dict[str, Any]):
        """The learner's spec (a dataclass with `build(reduce_gradients)`); `common`: model, lora, seeds, dtype."""
        raise NotImplementedError

    @classmethod
    def optimizer_steps_per_epoch(cls, config: TrainConfig) -> int:
        raise NotImplementedError

    @classmethod
    def group_size(cls, config: TrainConfig) -> int:
        """Consecutive samples of a rollout batch that share a prompt (GRPO's groups; 1 = every sample its own
        prompt)."""
        return 1

    @classmethod
    def noise_group_size(cls, config: TrainConfig) -> int:
        """Consecutive samples of a rollout batch that share their initial noise x_0 (1 = each its own)."""
        return 1

    @classmethod
    def memory_settings(cls, config: TrainConfig) -> list[list[str]]:
        """`--set KEY=VALUE` lists that lower the learner's memory without changing what one optimizer step
        averages over, most preferred first; `rlcm plan` advises the first that the config accepts and that fits."""
        return []

    @classmethod
    def differentiable_reward(cls) -> bool:
        """Whether the learner backpropagates through `reward.name` (then it must be a differentiable reward)."""
        return cls.source.learners_sample


OLD_LOG_PROB_DIAGNOSTICS = (
    ("old_logprob_gap_step", "|log π rollout − learner| per step k (median)"),
    ("ratio_first_pass_max_dev", "max |ratio − 1| before the first step"),
)
"""The rollout/learner trust panels of every PPO algorithm (`learner.ppo.old_log_probs`)."""


class RolloutAlgorithm(Algorithm):
    """Learns from the rollout actors' trajectories: PPO-style settings (train_batch_size, grad_accum_steps,
    inner_epochs)."""

    source = FromRollouts()

    @classmethod
    def check(cls, config: TrainConfig) -> None:
        s, key = config.settings, cls.section
        samples = config.samples_per_epoch
        per_learner, rest = divmod(samples, config.resources.num_learners)
        minibatches, partial = divmod(per_learner, s.train_batch_size)
        if rest or partial or (minibatches * s.inner_epochs) % s.grad_accum_steps:
            raise ValueError(
                f"samples per epoch ({samples} = sampling.batch_size × sampling.batches_per_epoch × "
                f"resources.num_rollout_actors) split over {config.resources.num_learners} learner(s) must fill whole "
                f"minibatches of {key}.train_batch_size={s.train_batch_size}, and minibatches × "
                f"{key}.inner_epochs must be a multiple of {key}.grad_accum_steps={s.grad_accum_steps}"
            )

    @classmethod
    def memory_settings(cls, config: TrainConfig) -> list[list[str]]:
        """Fewer pairs per UNet call (a set `pairs_per_call`), then smaller minibatches (train_batch_size dividing the
        learner's samples), grad_accum_steps raised to keep
        train_batch_size × grad_accum_steps where the batch arithmetic allows, else the nearest valid value."""
        s, key = config.settings, cls.section
        per_learner = config.samples_per_epoch // config.resources.num_learners
        pairs = getattr(s, "pairs_per_call", None)  # auto: the plan resolves it; absent: the algorithm's own loop
        pairs = pairs if isinstance(pairs, int) else 0
        fewer_pairs = range(pairs - s.train_batch_size, 0, -s.train_batch_size)
        out = [[f"{key}.pairs_per_call={pairs}"] for pairs in fewer_pairs]
        for batch in (b for b in range(s.train_batch_size - 1, 0, -1) if per_learner % b == 0):
            steps = per_learner // batch * s.inner_epochs  # minibatches per epoch; grad_accum_steps must divide it
            target = s.train_batch_size * s.grad_accum_steps / batch
            accum = min((a for a in range(1, steps + 1) if steps % a == 0), key=lambda a: (abs(a - target), a))
            out.append(
                [f"{key}.train_batch_size={batch}"]
                + ([f"{key}.grad_accum_steps={accum}"] if accum != s.grad_accum_steps else [])
            )
        return out

    @classmethod
    def unet_passes_per_call(cls, settings: BaseModel) -> int:
        """UNet calls per training call of the update (GRPO with β > 0 also runs the base at the same pairs)."""
        return 1

    @classmethod
    def update_calls(cls, config: TrainConfig, settings: BaseModel, recompute: bool) -> UpdateCalls:
        """The policy's UNet calls of one update on one learner with `settings` (the config's, `pairs_per_call`
        resolved): `learner.ppo.calls`, for `rlcm plan`."""
        s, steps = settings, config.sampling.num_steps
        return update_calls(
            config.samples_per_epoch // config.resources.num_learners,
            s,
            steps - 1 if cls.sampler == LCM else steps,  # the LCM's last step is deterministic, DDIM's is an action
            getattr(s, "timestep_fraction", 1.0),
            recompute,
        )

    @classmethod
    def training_calls(cls, config: TrainConfig, images_per_step: int, num_actions: int) -> TrainingCalls:
        """PPO: each pass trains ⌊timestep_fraction·actions⌋ steps per sample, with the sampler's CFG doubling."""
        s = config.settings
        trained = max(1, int(num_actions * getattr(s, "timestep_fraction", 1.0)))
        return TrainingCalls(with_grad=s.inner_epochs * trained, without_grad=0, images_per_call=images_per_step)

    @classmethod
    def optimizer_steps_per_epoch(cls, config: TrainConfig) -> int:
        s = config.settings
        minibatches = config.samples_per_epoch // config.resources.num_learners // s.train_batch_size
        return max(1, minibatches * s.inner_epochs // s.grad_accum_steps)


class FirstOrderAlgorithm(Algorithm):
    """Learners sample chains with grad from training prompts; settings carry batch_size, grad_accum_steps,
    updates_per_epoch."""

    source = FromLearners()

    @classmethod
    def check(cls, config: TrainConfig) -> None:
        if config.scaleout.mode == "async" and cls.source.learners_sample:
            raise ValueError(
                f"scaleout.mode: async mode needs an algorithm that learns from rollouts; {cls.name} trains on its own "
                f"samples, use scaleout.mode=sync"
            )

    @classmethod
    def optimizer_steps_per_epoch(cls, config: TrainConfig) -> int:
        return config.settings.updates_per_epoch

    @classmethod
    def memory_settings(cls, config: TrainConfig) -> list[list[str]]:
        """Gradient checkpointing on, then fewer prompts per objective call with grad_accum_steps keeping
        batch_size × grad_accum_steps (the prompts one optimizer step averages)."""
        s, key = config.settings, cls.section
        checkpoint = [] if s.gradient_checkpointing else [f"{key}.gradient_checkpointing=true"]
        prompts = s.batch_size * s.grad_accum_steps
        smaller = [
            [f"{key}.batch_size={b}", f"{key}.grad_accum_steps={prompts // b}"]
            for b in range(s.batch_size - 1, 0, -1)
            if prompts % b == 0
        ]
        return ([checkpoint] if checkpoint else []) + [checkpoint + change for change in smaller]

    @classmethod
    def prompts_per_epoch(cls, config: TrainConfig) -> int:
        """Prompts all learners together sample with grad in one epoch."""
        s = config.settings
        return s.batch_size * s.grad_accum_steps * s.updates_per_epoch * config.resources.num_learners
