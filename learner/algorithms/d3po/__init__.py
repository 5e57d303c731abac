"""D3PO (Yang et al., "Using Human Feedback to Fine-tune Diffusion Models without Any Reward Model", CVPR 2024):
DPO per denoising step on pairs of the rollout actors' trajectories.

For a prompt, two consecutive samples of a rollout batch (the same policy version; by default the same initial noise)
form a pair; a preference source (`preferences.py`: a reward scorer, a file of recorded judgements; `people.py`:
people on the labelling page) says which one is preferred, and every trained step k of the pair adds
−log σ(β·[(log π_θ − log π_ref)(a_k^w|s_k^w) − (log π_θ − log π_ref)(a_k^l|s_k^l)]) (`loss.py`), π_ref the LoRA-free
base at the recorded states. Ties, skips and stale pairs train nothing and are counted. Works on the LCM and the DDIM
policy (`rollout.policies`).
"""

from __future__ import annotations

from learner.algorithms.base import Labelling, RolloutAlgorithm
from learner.algorithms.d3po.preferences import read_judgements
from learner.algorithms.d3po.settings import D3POSettings, PreferenceSettings
from rollout.samplers import DDIM, LCM, sampler_of

__all__ = ["D3PO", "D3POSettings", "PreferenceSettings"]


class D3PO(RolloutAlgorithm):
    name = "d3po"
    title = "D3PO"
    section = "d3po"
    settings = D3POSettings
    summary = (
        ("preferences_used", "prefs", ".0f"),
        ("preference_accuracy", "pref acc", ".2f"),
        ("implicit_margin", "margin", ".3g"),
    )
    diagnostics = (
        ("implicit_margin", "implicit reward margin β·Δ(log π_θ − log π_ref) (mean)"),
        ("preference_accuracy", "share of trained (pair, step) terms the policy ranks right"),
        ("clipfrac", "share of ratios π_θ/π_ref clipped to 1 ± ε"),
        ("pairs_tied", "tied pairs per update"),
        ("pairs_skipped", "skipped pairs per update"),
        ("pairs_stale", "stale pairs dropped per update"),
        ("preference_reward_agreement", "preferences that agree with the reward"),
        ("judgements_per_minute", "judgements stored per minute (source human)"),
        ("judgement_wait_s", "seconds the update waited for people (source human)"),
        ("labeller_agreement", "repeated pairs two labellers judged alike (source human)"),
        ("held_out_preference_accuracy", "share of held-out (pair, step) terms the policy ranks right"),
        ("held_out_implicit_margin", "implicit reward margin on the held-out pairs (mean)"),
    )
    optimizes = (
        "DPO per denoising step on pairs of samples (same prompt, same initial noise) against the LoRA-free base; "
        "preferences from a reward, a file of judgements or people on a labelling page"
    )
    paper = "Yang et al., Using Human Feedback to Fine-tune Diffusion Models without Any Reward Model (D3PO, CVPR 2024)"

    @classmethod
    def check_model(cls, config) -> None:
        """Any model with a policy: an LCM (the LCM policy) or a Stable Diffusion model (DDIM)."""

    @classmethod
    def sampler_for(cls, config) -> str:
        return sampler_of(config.model.name) or LCM

    @classmethod
    def eta(cls, config) -> float | None:
        return config.settings.eta if cls.sampler_for(config) == DDIM else None

    @classmethod
    def check(cls, config) -> None:
        batch = config.sampling.batch_size
        if batch % 2:
            raise ValueError(
                f"sampling.batch_size: {batch} is odd; D3PO pairs consecutive samples of a batch, use an even size"
            )
        if config.settings.preferences.source == "file":
            read_judgements(config.settings.preferences.path)  # a malformed file is a config error, before Ray starts
        super().check(config)

    @classmethod
    def labelling(cls, config) -> Labelling | None:
        """Source human: people judge the pairs; the store's staleness bound is `d3po.max_staleness`."""
        preferences = config.settings.preferences
        return Labelling(config.settings.max_staleness, preferences.serve) if preferences.source == "human" else None

    @classmethod
    def without_people(cls, section: dict) -> str | None:
        if section["preferences"]["source"] != "human":
            return None
        section["preferences"] = {"source": "reward"}
        return "d3po.preferences: human -> reward (a dry run waits for no one: the higher reward wins)"

    @classmethod
    def group_size(cls, config) -> int:
        return 2

    @classmethod
    def noise_group_size(cls, config) -> int:
        return 2 if config.settings.same_noise else 1

    @classmethod
    def memory_settings(cls, config) -> list[list[str]]:
        """Smaller even minibatches (whole pairs), as `RolloutAlgorithm` advises them."""
        return [change for change in super().memory_settings(config) if int(change[0].split("=")[1]) % 2 == 0]

    @classmethod
    def reference_calls_per_step(cls, config) -> int:
        """D3PO runs the base (LoRA disabled, no grad) once per trained step: log π_ref."""
        return 1

    @classmethod
    def learner_spec(cls, config, common):
        from learner.algorithms.d3po.learner import D3POLearnerSpec

        return D3POLearnerSpec(
            d3po=config.settings,
            total_optimizer_steps=config.run.epochs * config.optimizer_steps_per_epoch,
            **common,
        )
