"""The steering methods and FK potentials by name (no torch here, so `rlcm --help` and option checks stay light;
the math is in `rollout.steering`)."""

METHODS = ("best-of-n", "fk")
POTENTIALS = ("diff", "max", "current")
