"""Moved to `learner.algorithms.rocm.lam_controller` (ROCM's λ rule); this name stays until cluster/ and benchmarks/
import from there."""

from learner.algorithms.rocm.lam_controller import LamController, controller_for, lam_update

__all__ = ["LamController", "controller_for", "lam_update"]
