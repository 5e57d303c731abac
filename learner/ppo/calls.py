"""How many UNet calls one PPO update makes, and how many pairs each evaluates: pure arithmetic, no torch.

`learner.ppo.old_log_probs` groups the minibatch calls of an update with `group_bounds`; `update_calls` counts the
same groups from the batch shape alone, so `rlcm plan` can say what an update costs before anything runs (and a test
checks it against a forward hook on the UNet).
"""

from __future__ import annotations

from dataclasses import dataclass

from learner.ppo.settings import PPOSettings


def steps_trained(num_transitions: int, timestep_fraction: float) -> int:
    """How many of a sample's action steps one pass trains on (DDPO: int(H·fraction), at least 1)."""
    return max(1, int(num_transitions * timestep_fraction))


def group_bounds(num_calls: int, calls_per_group: int, window: int | None = None, first: int = 0) -> list[range]:
    """The calls of each group, as index ranges: up to `calls_per_group` consecutive calls; a group never spans an
    optimizer step (one every `window` calls, counted from call number `first`)."""
    bounds, start = [], 0
    for index in range(1, num_calls):
        if index - start == calls_per_group or (window is not None and (first + index) % window == 0):
            bounds.append(range(start, index))
            start = index
    return [*bounds, range(start, num_calls)] if num_calls else []


def _pass_sizes(num_samples: int, train_batch_size: int, steps: int) -> list[int]:
    """Pairs of each minibatch call of one pass: each minibatch (the last may be short) once per step."""
    full, rest = divmod(num_samples, train_batch_size)
    return [size for size in [train_batch_size] * full + ([rest] if rest else []) for _ in range(steps)]


def _grouped(sizes: list[int], calls_per_group: int, window: int | None = None, first: int = 0) -> list[int]:
    return [sum(sizes[i] for i in r) for r in group_bounds(len(sizes), calls_per_group, window, first)]


@dataclass(frozen=True)
class UpdateCalls:
    """The UNet calls of one PPO update on one learner: (sample, step) pairs per call, in order."""

    recompute: list[int]  # π_old recomputation (no grad), before the first optimizer step
    train: list[int]  # the training passes (forward + backward)

    def unet_calls(self, passes: int = 1) -> int:
        """UNet calls in all, with `passes` UNet calls per training call (GRPO with β > 0 runs the base too)."""
        return len(self.recompute) + passes * len(self.train)

    @property
    def pairs_per_call(self) -> int:
        """The most pairs one call evaluates."""
        return max(self.recompute + self.train, default=0)


def update_calls(
    num_samples: int, settings: PPOSettings, num_transitions: int, timestep_fraction: float, recompute: bool
) -> UpdateCalls:
    """The policy's UNet calls of one update of `num_samples` samples with `num_transitions` actions each (before
    an algorithm's extra passes, e.g. GRPO's base model, and classifier-free guidance's doubling of the images)."""
    trained = steps_trained(num_transitions, timestep_fraction)
    window, per_group = settings.grad_accum_steps * trained, settings.calls_per_group
    one_pass = _pass_sizes(num_samples, settings.train_batch_size, trained)
    train = [
        size
        for epoch in range(settings.inner_epochs)
        for size in _grouped(one_pass, per_group, window, epoch * len(one_pass))
    ]
    again = []
    if recompute:  # the first pass's groups, then the steps later epochs may visit (`first_pass_groups`)
        steps = trained if settings.inner_epochs == 1 else num_transitions
        rest = _pass_sizes(num_samples, settings.train_batch_size, steps - trained)
        again = _grouped(one_pass, per_group, window) + _grouped(rest, per_group)
    return UpdateCalls(again, train)
