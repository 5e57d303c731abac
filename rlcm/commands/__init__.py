"""The `rlcm` command line: its commands, the checks before Ray starts, the dry run."""
