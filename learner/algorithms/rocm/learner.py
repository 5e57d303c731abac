"""ROCM's learner: the first-order learner ascending r − λ·Σ_k D_k (`learner.algorithms.rocm.objective`)."""

from __future__ import annotations

from dataclasses import dataclass

from learner.algorithms.rocm.objective import rocm_call
from learner.first_order.learner import FirstOrderLearner, FirstOrderLearnerSpec


@dataclass
class ROCMLearnerSpec(FirstOrderLearnerSpec):
    def build(self, reduce_gradients=None) -> ROCMLearner:
        return ROCMLearner(self, reduce_gradients)


class ROCMLearner(FirstOrderLearner):
    """ROCM (and DRaFT: the same objective, K fixed by `truncate_steps`)."""

    objective = staticmethod(rocm_call)
