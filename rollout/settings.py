"""Typed settings of the rollout role that config validation needs without importing torch or diffusers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from peft import LoraConfig


class LoraSettings(BaseModel):
    """Which UNet modules get LoRA, with what rank and alpha (scale = alpha / rank)."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0)
    target_modules: list[str] = Field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"], min_length=1)
    init: str = Field("gaussian", pattern="^(gaussian|default)$")

    def peft_config(self) -> LoraConfig:
        from peft import LoraConfig

        init = "gaussian" if self.init == "gaussian" else True
        return LoraConfig(
            r=self.rank, lora_alpha=self.alpha, target_modules=self.target_modules, init_lora_weights=init
        )
