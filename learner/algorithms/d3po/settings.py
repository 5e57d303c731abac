"""D3PO's typed settings, importable without torch (config validation stays fast).

Defaults follow the D3PO code (yk7333/d3po `config/base.py`): β = 0.1, the ratio π_θ/π_ref clipped to [1 − 0.1,
1 + 0.1], learning rate 3e-5, grad-norm clip 1.0, every step trained, both samples of a pair from one initial noise.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PageSettings(BaseModel):
    """The labelling page `rlcm train` serves beside a run whose preferences come from people (`rlcm label`'s)."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="interface to listen on (the head node's, on a cluster)")
    port: int = Field(8010, ge=0, le=65535, description="TCP port (0: a free one, printed at start)")
    token: str | None = Field(
        None, description="the page's token (none: $RLCM_LABEL_TOKEN, else a random one printed with the address)"
    )
    repeat_fraction: float = Field(
        0.1,
        ge=0,
        le=1,
        description="share of the pairs (by id) that, once judged, are offered once more to another labeller: "
        "labeller_agreement compares the two judgements",
    )


class PreferenceSettings(BaseModel):
    """Where a pair's preference comes from (`learner.algorithms.d3po.preferences`)."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["reward", "file", "human"] = Field(
        "reward",
        description="reward: the higher reward (reward.name) wins (online DPO); file: recorded judgements; human: "
        "people on the labelling page (the run folder's judgements.sqlite; training waits for them)",
    )
    path: str | None = Field(None, description="source file: the JSONL file of judgements (docs/algorithms.md)")
    tie_threshold: float = Field(0.0, ge=0, description="source reward: |r_first − r_second| ≤ this is a tie")
    on_missing: Literal["error", "skip"] = Field(
        "error", description="source file: a pair the file does not judge stops the run (error) or is skipped"
    )
    serve: PageSettings | None = Field(
        None, description="source human: serve the labelling page beside `rlcm train` (none: run `rlcm label`)"
    )
    held_out_fraction: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="share of the judged pairs (by pair id) never trained on: after each update the policy's implicit "
        "reward margin and preference accuracy on them are held_out_implicit_margin and held_out_preference_accuracy "
        "(none: 0.1 for source human, else 0)",
    )
    held_out_pairs: int = Field(
        64, ge=1, description="how many of the newest held-out pairs the learner keeps and scores after each update"
    )

    def held_out(self) -> float:
        """`held_out_fraction`, its default resolved."""
        if self.held_out_fraction is not None:
            return self.held_out_fraction
        return 0.1 if self.source == "human" else 0.0

    @model_validator(mode="after")
    def _path_with_file(self) -> PreferenceSettings:
        if self.source == "file" and not self.path:
            raise ValueError("path: preferences.source=file needs preferences.path (a JSONL file of judgements)")
        if self.source != "file" and self.path:
            raise ValueError(f"path: only preferences.source=file reads a file (source is {self.source})")
        if self.source != "human" and self.serve is not None:
            raise ValueError(f"serve: only preferences.source=human serves a labelling page (source is {self.source})")
        return self


class D3POSettings(BaseModel):
    """The update's hyperparameters (D3PO's names where it has them)."""

    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(3e-5, gt=0)
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_weight_decay: float = Field(1e-4, ge=0)
    adam_epsilon: float = Field(1e-8, gt=0)
    max_grad_norm: float = Field(1.0, gt=0)
    lr_schedule: Literal["constant", "linear"] = Field(
        "constant", description="linear: decay to 0 over the run's optimizer steps"
    )
    train_batch_size: int = Field(
        2, ge=2, description="samples per minibatch call (both samples of each pair: even; D3PO: 1 pair)"
    )
    grad_accum_steps: int = Field(1, ge=1)
    inner_epochs: int = Field(1, ge=1)
    shuffle_timesteps: bool = True
    timestep_fraction: float = Field(
        1.0, gt=0, le=1, description="train each pair on a random ⌊fraction·steps⌋ of its steps (D3PO: 1, all)"
    )
    beta: float = Field(0.1, gt=0, description="β of −log σ(β·[(log π_θ − log π_ref)(w) − (log π_θ − log π_ref)(l)])")
    clip_eps: float | None = Field(
        0.1,
        gt=0,
        lt=1,
        description="ε: each ratio π_θ/π_ref clipped to [1 − ε, 1 + ε] (D3PO's eps; none: no clipping)",
    )
    eta: float = Field(1.0, gt=0, description="η of the DDIM sampler (Stable Diffusion models only; D3PO: 1)")
    same_noise: bool = Field(True, description="both samples of a pair start from the same initial noise x_0")
    max_staleness: int | None = Field(
        None,
        ge=0,
        description="pairs sampled more than this many policy versions before the update are dropped and counted "
        "(none: no bound); source human: the labelling page offers and accepts only the fresher ones",
    )
    preferences: PreferenceSettings = Field(default_factory=PreferenceSettings)

    @model_validator(mode="after")
    def _whole_pairs(self) -> D3POSettings:
        if self.train_batch_size % 2:
            raise ValueError(
                f"train_batch_size: {self.train_batch_size} samples is not a whole number of pairs; use an even number"
            )
        if self.timestep_fraction < 1 and not self.shuffle_timesteps:
            raise ValueError(
                "timestep_fraction: < 1 draws a random subset of steps per pair; set shuffle_timesteps true"
            )
        return self
