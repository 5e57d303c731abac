"""PPO's typed settings (RLCM Table 1 names), importable without torch (config validation stays fast)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class PPOSettings(BaseModel):
    """Hyperparameters of the update (RLCM Table 1 names)."""

    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(1e-4, gt=0)
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_weight_decay: float = Field(1e-4, ge=0)
    adam_epsilon: float = Field(1e-8, gt=0)
    clip_range: float = Field(1e-4, gt=0)
    adv_clip_max: float = Field(10.0, gt=0)
    max_grad_norm: float = Field(5.0, gt=0)
    train_batch_size: int = Field(2, ge=1)
    grad_accum_steps: int = Field(2, ge=1)
    inner_epochs: int = Field(1, ge=1)
    shuffle_timesteps: bool = True
    lr_schedule: Literal["constant", "linear"] = Field(
        "constant", description="linear: decay to 0 over the run's optimizer steps"
    )
    recompute_old_log_probs: bool | Literal["auto"] = Field(
        "auto",
        description="π_old = the learner's own log π at the update's start (same calls as its first pass, no grad) "
        "instead of the rollout's; auto: on unless the policy runs in float32 (in bf16/fp16 the two differ by more "
        "than clip_range)",
    )

    pairs_per_call: int | Literal["auto"] | None = Field(
        "auto",
        description="(sample, step) pairs per UNet call of the PPO update: consecutive minibatch calls of one "
        "optimizer window and one pass are evaluated together (a multiple of train_batch_size; more memory, fewer "
        "UNet launches, same loss and gradient); none: one call per minibatch step; auto: on GPU learners of a kind "
        "`rlcm plan` knows, the largest that its memory model says fits (printed by `rlcm plan`), else none",
    )

    @field_validator("recompute_old_log_probs", mode="before")
    @classmethod
    def _auto_or_bool(cls, value):
        if value != "auto" and not isinstance(value, bool):
            raise ValueError(f"recompute_old_log_probs must be auto, true or false, got {value!r}")
        return value

    @model_validator(mode="after")
    def _whole_minibatches_per_call(self):
        if isinstance(self.pairs_per_call, int) and self.pairs_per_call % self.train_batch_size:
            raise ValueError(
                f"pairs_per_call must be a multiple of train_batch_size ({self.train_batch_size}), "
                f"got {self.pairs_per_call}"
            )
        return self

    @property
    def calls_per_group(self) -> int:
        """Minibatch calls evaluated in one UNet call (`pairs_per_call` / `train_batch_size`; 1 without it or while
        it is an unresolved auto)."""
        return self.pairs_per_call // self.train_batch_size if isinstance(self.pairs_per_call, int) else 1

    def recomputes_old_log_probs(self, dtype) -> bool:
        """Whether π_old is recomputed for a policy whose UNet runs in `dtype` (auto: unless float32 or float64)."""
        if self.recompute_old_log_probs == "auto":
            return str(dtype) not in ("torch.float32", "torch.float64")
        return self.recompute_old_log_probs
