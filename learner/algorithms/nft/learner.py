"""The DiffusionNFT learner: per-prompt advantages → optimality r, the NFT loss on noised copies of the rollout's clean
latents, θ_old as a second peft LoRA adapter ("old") softly updated after each update."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from learner.algorithms.nft.loss import forward_noise, nft_loss, old_decay, optimality, soft_update
from learner.algorithms.nft.settings import NFTSettings
from learner.base import BaseLearner, BaseLearnerSpec, shard
from learner.guards import grad_norm_metrics
from learner.optim import optimizer_step
from learner.stat_tracker import PerPromptStatTracker
from rollout.policies import policy_for
from rollout.policies.ddim import guided_epsilon, unclipped_prediction
from rollout.policies.lcm import guidance_embedding, predict_denoised
from rollout.precision import TRAINABLE_DTYPE
from rollout.samplers import LCM
from rollout.trajectory import Trajectory

OLD = "old"  # the peft adapter name of θ_old; the trained one is peft's "default"


@dataclass(kw_only=True)
class NFTLearnerSpec(BaseLearnerSpec):
    """Everything the NFT learner needs to build itself."""

    nft: NFTSettings
    stat_buffer_size: int
    stat_min_count: int

    def build(self, reduce_gradients=None) -> NFTLearner:
        return NFTLearner(self, reduce_gradients)


@dataclass
class Batch:
    """What one update trains on: clean latents x0, optimality r, and the conditioning of each sample."""

    x0: torch.Tensor  # [B, C, h, w]
    r: torch.Tensor  # [B]
    prompt_embeds: torch.Tensor  # [B, L, D]
    w_embedding: torch.Tensor | None  # [B, E]: the LCM guidance embedding (None for DDIM: conditional ε, CFG-free)


class NFTLearner(BaseLearner):
    """θ (peft "default", trained) and θ_old (peft "old", frozen), both LoRA on the same UNet; θ_old starts equal to θ.

    The generator (seeded with `seed`, on the CPU) draws each pass's sample order, timesteps and noise."""

    def __init__(self, spec: NFTLearnerSpec, reduce_gradients=None):
        super().__init__(spec, reduce_gradients)
        self.tracker = PerPromptStatTracker(spec.stat_buffer_size, spec.stat_min_count)
        unet = self.pipe.unet
        with warnings.catch_warnings():  # peft warns that a second adapter joins the first: that is the point
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            unet.add_adapter(spec.lora.peft_config(), adapter_name=OLD)
        unet.set_adapter("default")
        trained = {name: p for name, p in unet.named_parameters() if p.requires_grad}
        others = dict(unet.named_parameters())
        self.old_params = [others[name.replace(".default.", f".{OLD}.")] for name in trained]
        with torch.no_grad():
            for old, new in zip(self.old_params, self.params, strict=True):
                old.data = new.detach().to(TRAINABLE_DTYPE).clone()
        self.optimizer_steps = 0

    @property
    def settings(self) -> NFTSettings:
        return self.spec.nft

    @contextmanager
    def active_adapter(self, name: str) -> Iterator[None]:
        """Run the UNet with adapter `name` (peft toggles requires_grad with the active adapter; restored after)."""
        self.pipe.unet.set_adapter(name)
        try:
            yield
        finally:
            self.pipe.unet.set_adapter("default")

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, batch: Batch, rows: torch.Tensor) -> torch.Tensor:
        """The clean prediction p(x_t, t): the LCM's denoised output (boundary condition included), or a DDIM model's
        x̂0 from its conditional output (ε, v or x̂0, per its scheduler's prediction type), unclipped."""
        unet, scheduler = self.pipe.unet, self.pipe.scheduler
        if batch.w_embedding is not None:
            return predict_denoised(unet, scheduler, x_t, t, batch.prompt_embeds[rows], batch.w_embedding[rows])
        output = guided_epsilon(unet, x_t, t, batch.prompt_embeds[rows], None, 1.0)
        return unclipped_prediction(scheduler, output, x_t, t)[0]

    def train_epoch(
        self, rewards: np.ndarray, valid: np.ndarray, *trajectories: Trajectory, world_size: int = 1
    ) -> dict[str, float]:
        """Advantages from the valid samples' rewards (all ranks alike), one NFT update on this rank's shard."""
        batch = Trajectory.concat(list(trajectories))
        keep = np.flatnonzero(np.asarray(valid, dtype=bool))
        if len(keep) == 0:
            return {"skipped_update": True}
        advantages = np.zeros(len(batch))
        advantages[keep] = self.tracker.update([batch.prompts[i] for i in keep], np.asarray(rewards)[keep])
        rows = keep.tolist() if world_size == 1 else shard(len(batch), self.rank, world_size)
        if len(rows) < len(batch):
            batch, advantages = batch.select(rows), advantages[rows]
        metrics = self.train(batch, advantages)
        metrics.update({f"stat_tracker_{k}": v for k, v in self.tracker.stats().items()})
        return metrics

    def train(self, trajectory: Trajectory, advantages: np.ndarray) -> dict[str, float]:
        """`inner_epochs` passes of the NFT loss over the batch, then θ_old ← η·θ_old + (1−η)·θ; bumps the version."""
        s, device = self.settings, self.device
        trajectory = trajectory.to(device)
        x0 = trajectory.final_latents
        n = len(trajectory)
        batch = Batch(
            x0=x0,
            r=optimality(torch.as_tensor(advantages, dtype=x0.dtype, device=device), s.adv_clip_max),
            prompt_embeds=trajectory.prompt_embeds,
            w_embedding=guidance_embedding(self.pipe, trajectory.guidance_scale, n).to(device)
            if policy_for(self.pipe).name == LCM
            else None,
        )
        alphas = self.pipe.scheduler.alphas_cumprod.to(device, x0.dtype)
        window = s.grad_accum_steps * s.timesteps_per_sample
        infos: list[dict[str, torch.Tensor]] = []
        grad_norms: list[float] = []
        calls = 0
        self.pipe.unet.train()
        for _ in range(s.inner_epochs):
            order = torch.randperm(n, generator=self.generator)
            timesteps = torch.randint(
                s.timestep_min, s.timestep_max + 1, (n, s.timesteps_per_sample), generator=self.generator
            )
            noise = torch.randn((n, s.timesteps_per_sample, *x0.shape[1:]), generator=self.generator)
            for start in range(0, n, s.train_batch_size):
                rows = order[start : start + s.train_batch_size]
                for j in range(s.timesteps_per_sample):
                    loss, info = self.call_loss(
                        batch, rows.to(device), timesteps[rows, j].to(device), alphas, noise[rows, j]
                    )
                    (loss / window).backward()
                    infos.append({"loss": loss.detach(), **info})
                    calls += 1
                    if calls % window == 0:
                        grad_norms.append(self.step())
        if partial := calls % window:  # a partial window: weight by the true count
            for p in self.params:
                if p.grad is not None:
                    p.grad.mul_(window / partial)
            grad_norms.append(self.step())
        self.pipe.unet.eval()
        eta = old_decay(self.optimizer_steps, s.eta_rate, s.eta_max, s.eta_flat_steps)
        soft_update(self.old_params, self.params, eta)
        self.version += 1
        values = {key: torch.stack([i[key] for i in infos]).cpu().tolist() for key in infos[0]}  # one sync
        return {
            **{key: float(np.mean(v)) for key, v in values.items()},
            **grad_norm_metrics(grad_norms),
            "optimizer_steps": float(len(grad_norms)),
            "learning_rate": float(self.optimizer.param_groups[0]["lr"]),
            "eta": eta,
        }

    def call_loss(
        self, batch: Batch, rows: torch.Tensor, t: torch.Tensor, alphas: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One training call: x_t by the forward process, p_old (θ_old) and p_base without grad, p_θ with grad."""
        s = self.settings
        x0 = batch.x0[rows]
        x_t = forward_noise(x0, noise.to(x0), alphas[t])
        with torch.no_grad():
            with self.active_adapter(OLD):
                p_old = self.predict(x_t, t, batch, rows)
            p_base = self.base_prediction(x_t, t, batch, rows) if s.kl_coef > 0 else None
        p_theta = self.predict(x_t, t, batch, rows)
        return nft_loss(
            p_theta,
            p_old,
            x0.to(p_theta.dtype),
            batch.r[rows],
            s.beta,
            s.adv_clip_max,
            s.adaptive_weighting,
            p_base,
            s.kl_coef,
        )

    def base_prediction(self, x_t: torch.Tensor, t: torch.Tensor, batch: Batch, rows: torch.Tensor) -> torch.Tensor:
        """p_base: the same UNet with every LoRA disabled."""
        self.pipe.unet.disable_adapters()
        try:
            return self.predict(x_t, t, batch, rows)
        finally:
            self.pipe.unet.enable_adapters()

    def step(self) -> float:
        self.optimizer_steps += 1
        return optimizer_step(
            self.optimizer, self.params, self.settings.max_grad_norm, self.reduce_gradients, self.lr_scheduler
        )

    def extra_state(self) -> dict:
        return {
            "tracker": self.tracker.state_dict(),
            "old_adapter": [p.detach().cpu().clone() for p in self.old_params],
            "optimizer_steps": self.optimizer_steps,
        }

    def load_extra_state(self, state: dict) -> None:
        self.tracker.load_state_dict(state["tracker"])
        with torch.no_grad():
            for p, value in zip(self.old_params, state["old_adapter"], strict=True):
                p.copy_(value)
        self.optimizer_steps = state["optimizer_steps"]
