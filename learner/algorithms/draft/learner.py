"""AlignProp's learner: the ROCM learner with K drawn per objective call from the seeded per-rank generator."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from learner.algorithms.rocm.learner import ROCMLearner, ROCMLearnerSpec


@dataclass
class AlignPropLearnerSpec(ROCMLearnerSpec):
    def build(self, reduce_gradients=None) -> AlignPropLearner:
        return AlignPropLearner(self, reduce_gradients)


class AlignPropLearner(ROCMLearner):
    def truncate_steps(self) -> int:
        """K ~ U{k_min, …, k_max}, from the learner's generator (so a resumed run draws the same K)."""
        s = self.settings
        k_max = s.k_max or self.spec.num_steps - 1
        return int(torch.randint(s.k_min, k_max + 1, (1,), generator=self.generator, device=self.generator.device))
