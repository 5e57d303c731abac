"""DiffusionNFT (Zheng et al., 2025): online RL on the forward process, on the LCM or a DDIM model.

The rollout actors sample clean images as for any rollout algorithm; the learner needs only their final latents x0
and rewards. Rewards become per-prompt advantages A and optimality probabilities r = clip(A/A_max, −1, 1)/2 + 1/2;
each sample is noised to x_t at training timesteps t drawn over the whole schedule (independent of the sampling
steps), and the clean-image prediction p_θ(x_t, t) of the trained LoRA and p_old of a frozen second LoRA (θ_old)
make the implicit positive and negative policies of the loss (`learner.algorithms.nft.loss`). θ_old follows θ softly
after each update with the authors' η schedule. No log-probabilities, no trajectory states.
"""

from __future__ import annotations

from learner.algorithms.base import RolloutAlgorithm, TrainingCalls
from learner.algorithms.nft.settings import NFTSettings
from rollout.samplers import DDIM, LCM, sampler_of


class NFT(RolloutAlgorithm):
    name = "nft"
    title = "DiffusionNFT"
    section = "nft"
    settings = NFTSettings
    likelihood = "denoising"
    summary = (("old_deviation", "‖p_θ − p_old‖²", ".3g"), ("eta", "η", ".3f"))
    diagnostics = (
        ("loss", "NFT loss"),
        ("old_deviation", "mean (p_θ − p_old)² (trained vs θ_old prediction)"),
        ("optimality_mean", "mean optimality probability r"),
        ("eta", "η of the θ_old update"),
        ("kl_to_base", "mean (p_θ − p_base)²"),
    )
    optimizes = (
        "reward-weighted denoising loss on noised copies of the policy's clean samples, split into implicit positive "
        "and negative policies (θ_old a soft copy); no log-probs"
    )
    paper = "Zheng et al., DiffusionNFT: Online Diffusion Reinforcement with Forward Process (2025)"

    @classmethod
    def check_model(cls, config) -> None:
        """Any model the rollout actors sample: an LCM or a Stable Diffusion (DDIM) model."""
        kind = sampler_of(config.model.name)
        if kind is not None and kind not in (LCM, DDIM):
            raise ValueError(f"model.name: {config.model.name!r} is neither an LCM nor a DDIM model")

    @classmethod
    def sampler_for(cls, config) -> str:
        return sampler_of(config.model.name) or LCM

    @classmethod
    def eta(cls, config) -> float | None:
        return config.settings.ddim_eta if cls.sampler_for(config) == DDIM else None

    @classmethod
    def training_calls(cls, config, images_per_step: int, num_actions: int) -> TrainingCalls:
        """Per sample and pass, `timesteps_per_sample` calls of p_θ with grad and of p_old (and p_base) without; the
        conditional prediction only (CFG-free)."""
        s = config.settings
        pairs = s.inner_epochs * s.timesteps_per_sample
        return TrainingCalls(
            with_grad=pairs, without_grad=pairs * (2 if s.kl_coef > 0 else 1), images_per_call=1, extra_adapters=1
        )

    @classmethod
    def learner_spec(cls, config, common):
        from learner.algorithms.nft.learner import NFTLearnerSpec

        return NFTLearnerSpec(
            nft=config.settings,
            stat_buffer_size=config.stat_tracking.buffer_size,
            stat_min_count=config.stat_tracking.min_count,
            total_optimizer_steps=config.run.epochs * config.optimizer_steps_per_epoch,
            **common,
        )
