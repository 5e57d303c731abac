"""The sampled batch every policy returns and the learner consumes: prompts, chain states, log π, images."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class Trajectory:
    """One batch of B sampled chains; the field names and shapes are a contract (docs/CONTRACTS.md, "Trajectory")."""

    prompts: list[str]
    prompt_embeds: torch.Tensor  # [B, L, D]
    timesteps: torch.Tensor  # int [H]
    latents: torch.Tensor  # fp32 [B, H, C, h, w]: x_0 … x_{H-1}
    log_probs: torch.Tensor  # fp32 [B, H-1]: log π(x_{k+1} | x_k) at sampling time
    images: torch.Tensor  # uint8 [B, 3, height, width]
    guidance_scale: float
    policy_version: int
    negative_prompt_embeds: torch.Tensor | None = (
        None  # [B, L, D]: the DDIM policy's unconditional embeds (None for LCM)
    )
    eta: float | None = None  # the DDIM policy's η (None for LCM)
    final_latents: torch.Tensor | None = None  # fp32 [B, C, h, w]: the latent decoded to `images` (LCM: denoised_{H-1})

    def __len__(self) -> int:
        return len(self.prompts)

    def to(self, device: torch.device | str) -> Trajectory:
        return replace(
            self,
            prompt_embeds=self.prompt_embeds.to(device),
            timesteps=self.timesteps.to(device),
            latents=self.latents.to(device),
            log_probs=self.log_probs.to(device),
            images=self.images.to(device),
            negative_prompt_embeds=None
            if self.negative_prompt_embeds is None
            else self.negative_prompt_embeds.to(device),
            final_latents=None if self.final_latents is None else self.final_latents.to(device),
        )

    def select(self, index: list[int]) -> Trajectory:
        """The samples at `index`, in that order."""
        rows = torch.as_tensor(index, dtype=torch.long)
        return replace(
            self,
            prompts=[self.prompts[i] for i in index],
            prompt_embeds=self.prompt_embeds[rows],
            latents=self.latents[rows],
            log_probs=self.log_probs[rows],
            images=self.images[rows],
            negative_prompt_embeds=None if self.negative_prompt_embeds is None else self.negative_prompt_embeds[rows],
            final_latents=None if self.final_latents is None else self.final_latents[rows],
        )

    @staticmethod
    def concat(trajectories: list[Trajectory]) -> Trajectory:
        """Join batches sampled with the same timesteps, guidance and η into one."""
        first = trajectories[0]
        for other in trajectories[1:]:
            if not torch.equal(other.timesteps, first.timesteps) or (other.guidance_scale, other.eta) != (
                first.guidance_scale,
                first.eta,
            ):
                raise ValueError("cannot concatenate trajectories with different timesteps, guidance scales or η")
        return Trajectory(
            prompts=[p for t in trajectories for p in t.prompts],
            prompt_embeds=torch.cat([t.prompt_embeds for t in trajectories]),
            timesteps=first.timesteps,
            latents=torch.cat([t.latents for t in trajectories]),
            log_probs=torch.cat([t.log_probs for t in trajectories]),
            images=torch.cat([t.images for t in trajectories]),
            guidance_scale=first.guidance_scale,
            policy_version=min(t.policy_version for t in trajectories),
            negative_prompt_embeds=None
            if first.negative_prompt_embeds is None
            else torch.cat([t.negative_prompt_embeds for t in trajectories]),
            eta=first.eta,
            final_latents=None
            if any(t.final_latents is None for t in trajectories)
            else torch.cat([t.final_latents for t in trajectories]),
        )
