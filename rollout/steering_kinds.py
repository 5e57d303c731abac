"""The steering methods and FK potentials by name (no torch here, so `rlcm --help` and option checks stay light;
the math is in `rollout.steering`)."""

METHODS = ("best-of-n", "fk")
POTENTIALS = ("diff", "max", "current")


def resampling_steps(num_steps: int, every: int) -> list[int]:
    """FK's resampling steps when it resamples after every K-th step: k = K−1, 2K−1, … before the last one (none for
    K = 0)."""
    return list(range(every - 1, num_steps - 1, every)) if every else []
