"""The D3PO learner: pairs of the rollout actors' trajectories, judged by a preference source, trained per step with
`d3po_loss` against the LoRA-free base."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from learner.algorithms.d3po.held_out import HeldOutPairs, held_out_mask, held_out_metrics
from learner.algorithms.d3po.people import build_source
from learner.algorithms.d3po.preferences import Choice, Pair
from learner.algorithms.d3po.settings import D3POSettings
from learner.algorithms.d3po.update import d3po_update
from learner.base import BaseLearner, BaseLearnerSpec, shard
from rollout.policies import policy_for
from rollout.trajectory import Trajectory

SIGN = {Choice.FIRST: 1, Choice.SECOND: -1, Choice.TIE: 0, Choice.SKIP: 0}


@dataclass(kw_only=True)
class D3POLearnerSpec(BaseLearnerSpec):
    d3po: D3POSettings
    judgements: Callable[[], Any] | None = None  # source human: opens the run folder's judgement store (the driver's)

    def build(self, reduce_gradients=None) -> D3POLearner:
        return D3POLearner(self, reduce_gradients)


def pair_id(prompt: str, policy_version: int, first_noise: torch.Tensor, second_noise: torch.Tensor) -> str:
    """A pair's id: 32 hex digits of sha256 over its prompt, policy version and both initial noises x_0 (a pure
    function of the run's seed, so a rerun of the same config, or a resumed one, names its pairs alike)."""
    digest = hashlib.sha256(f"{policy_version}\n{prompt}\n".encode())
    for noise in (first_noise, second_noise):
        digest.update(noise.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def noise_seed(noise: torch.Tensor) -> int:
    """A sample's seed as the judgement store records it: 60 bits of sha256 over its initial noise x_0 (a rollout
    batch draws every sample's noise from one generator, so no sample has a seed of its own)."""
    data = noise.detach().float().cpu().contiguous().numpy().tobytes()
    return int(hashlib.sha256(data).hexdigest()[:15], 16)


def png(image: torch.Tensor) -> bytes:
    """PNG bytes of one uint8 [3, H, W] image."""
    out = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def make_pairs(
    batch: Trajectory, versions: np.ndarray, rewards: np.ndarray, valid: np.ndarray, images: bool = False
) -> list[Pair]:
    """Samples 2p and 2p+1 as pair p (with both images as PNG if `images`); ValueError unless both share a prompt."""
    if len(batch) % 2 or any(batch.prompts[i] != batch.prompts[i + 1] for i in range(0, len(batch), 2)):
        raise ValueError(f"D3PO needs pairs of 2 consecutive samples with one prompt each; got prompts {batch.prompts}")
    seen = np.where(valid, rewards, np.nan)
    noise = batch.latents[:, 0]
    return [
        Pair(
            pair_id(batch.prompts[i], int(versions[i]), noise[i], noise[i + 1]),
            batch.prompts[i],
            int(versions[i]),
            (float(seen[i]), float(seen[i + 1])),
            (noise_seed(noise[i]), noise_seed(noise[i + 1])),
            (png(batch.images[i]), png(batch.images[i + 1])) if images else None,
        )
        for i in range(0, len(batch), 2)
    ]


def agreement(pairs: list[Pair], choices: list[Choice]) -> float:
    """Share of the decided pairs (first or second, two different finite rewards) whose winner has the higher reward."""
    agree = [
        (c == Choice.FIRST) == (p.rewards[0] > p.rewards[1])
        for p, c in zip(pairs, choices)
        if c in (Choice.FIRST, Choice.SECOND) and np.isfinite(p.rewards).all() and p.rewards[0] != p.rewards[1]
    ]
    return float(np.mean(agree)) if agree else float("nan")


class D3POLearner(BaseLearner):
    """`train_epoch(rewards, valid, *trajectories)`: pair up, drop stale pairs, ask the source, hold out
    `preferences.held_out_fraction` of the judged pairs (scored after each update), one D3PO update.

    The shuffling generator is seeded with `seed` alone: every rank shuffles its shard the same way."""

    def __init__(self, spec: D3POLearnerSpec, reduce_gradients=None):
        super().__init__(spec, reduce_gradients)
        self.source = build_source(spec.d3po.preferences, spec.judgements, spec.d3po.max_staleness, self.rank == 0)
        self.source.new_version(self.version)
        self.held_out = HeldOutPairs(spec.d3po.preferences.held_out_pairs)

    @property
    def settings(self) -> D3POSettings:
        return self.spec.d3po

    def extra_state(self) -> dict:
        return self.source.state()

    def load_extra_state(self, state: dict) -> None:
        self.source.load_state(state)
        self.source.new_version(self.version)

    def judge(self, pairs: list[Pair]) -> tuple[np.ndarray, dict]:
        """Each pair's sign (+1 first preferred, −1 second, 0 none) and the counts: stale pairs (older than
        `max_staleness` versions) are dropped before the source sees them."""
        bound = self.settings.max_staleness
        fresh = [bound is None or self.version - p.policy_version <= bound for p in pairs]
        asked = [p for p, ok in zip(pairs, fresh) if ok]
        answers = iter(self.source.judge(asked) if asked else [])
        choices = [next(answers) if ok else None for ok in fresh]
        decided = [c for c in choices if c is not None]
        sign = np.array([0 if c is None else SIGN[c] for c in choices])
        info = {
            "pairs": len(pairs),
            "preferences_used": int(np.count_nonzero(sign)),
            "pairs_tied": decided.count(Choice.TIE),
            "pairs_skipped": decided.count(Choice.SKIP),
            "pairs_stale": fresh.count(False),
            "preference_reward_agreement": agreement(asked, decided),
        }
        return sign, info

    def train_epoch(
        self, rewards: np.ndarray, valid: np.ndarray, *trajectories: Trajectory, world_size: int = 1
    ) -> dict[str, float]:
        """Pairs judged, then one update on this rank's pairs; ties, skips and stale pairs train nothing.

        With one learner they are dropped; with several they stay with weight 0, so every rank takes the same number
        of optimizer steps."""
        batch = Trajectory.concat(list(trajectories))
        versions = np.concatenate([np.full(len(t), t.policy_version) for t in trajectories])
        images = self.source.wants_images and self.rank == 0
        pairs = make_pairs(
            batch, versions, np.asarray(rewards, dtype=np.float64), np.asarray(valid, dtype=bool), images
        )
        sign, info = self.judge(pairs)
        held = held_out_mask(pairs, sign, self.settings.preferences.held_out())
        for p in np.flatnonzero(held).tolist():
            self.held_out.add(batch.select([2 * p, 2 * p + 1]), sign[p])
        sign = np.where(held, 0, sign)
        info["pairs_held_out"] = int(held.sum())
        info["preferences_used"] = int(np.count_nonzero(sign))
        info["samples_trained"] = 2 * info["preferences_used"]
        if not info["preferences_used"]:
            return {"skipped_update": True, **info, **self.source.metrics()}
        kept = np.flatnonzero(sign).tolist() if world_size == 1 else shard(len(pairs), self.rank, world_size)
        rows = [i for p in kept for i in (2 * p, 2 * p + 1)]
        batch = (batch if len(rows) == len(batch) else batch.select(rows)).to(self.device)
        metrics = d3po_update(
            self.pipe.unet,
            self.optimizer,
            self.params,
            policy_for(self.pipe).transitions(self.pipe, batch),
            torch.as_tensor(sign[kept], device=self.device),
            batch.log_probs.shape[1],
            self.settings,
            self.generator,
            self.reduce_gradients,
            self.lr_scheduler,
        )
        self.version += 1
        self.source.new_version(self.version)
        return {**metrics, **info, **self.source.metrics(), **self.score_held_out()}

    def score_held_out(self) -> dict[str, float]:
        """The current policy on the kept held-out pairs (`held_out.held_out_metrics`); {} before the first."""
        if not len(self.held_out):
            return {}
        batch, sign = self.held_out.batch()
        batch = batch.to(self.device)
        transitions = policy_for(self.pipe).transitions(self.pipe, batch)
        pairs_per_call = self.settings.train_batch_size // 2
        return held_out_metrics(self.pipe.unet, transitions, sign.to(self.device), pairs_per_call, self.settings.beta)
