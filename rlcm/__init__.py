"""rlcm: the parts of the trainer around the Ray job: configuration, run folders, evaluation, planning, commands."""
