"""The per-step f-divergences D(π_θ ‖ π_base) the first-order objectives can subtract, by name (no torch here, so
config validation stays light; their closed forms are in `learner.divergences`)."""

DIVERGENCES = ("none", "kl", "reverse_kl", "hellinger", "fisher", "js")
