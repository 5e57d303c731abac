"""Clipped PPO, shared by RLCM, GRPO and DDPO: `settings` (PPOSettings), `loss` (the clipped surrogate and the
`LossFn` hook), `update` (the update loop), `learner` (PPOLearner).

Importing this package loads no torch (config validation imports `learner.ppo.settings`). The names below are
the old `learner.ppo` module's, loaded on first use for `cluster/` and `benchmarks/` until they import from the
modules above; then this table goes.
"""

from __future__ import annotations

import importlib

_MOVED = {
    "PPOSettings": "learner.ppo.settings",
    "ppo_loss": "learner.ppo.loss",
    "TrainBatch": "learner.ppo.update",
    "ppo_update": "learner.ppo.update",
    "steps_trained": "learner.ppo.calls",
}


def __getattr__(name: str):
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'learner.ppo' has no attribute {name!r}")
