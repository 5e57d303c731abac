"""What a Ray job ships: `ray job submit --working-dir .` uploads the checkout minus the job's excludes and what
.gitignore lists (Ray honours it); the code of every package must survive both, and run outputs must not."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pathspec

from cluster.entrypoint import EXCLUDES

ROOT = Path(__file__).resolve().parent.parent


def test_the_job_upload_keeps_every_package_file_and_drops_run_outputs():
    excluded = pathspec.PathSpec.from_lines("gitwildmatch", EXCLUDES)
    ignored = pathspec.PathSpec.from_lines("gitwildmatch", (ROOT / ".gitignore").read_text().splitlines())
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    code = [path for path in tracked if path.endswith(".py") and path.split("/")[0] in {"rlcm", "cluster", "learner"}]
    assert "rlcm/runs/__init__.py" in code and "rlcm/runs/folder.py" in code
    assert [path for path in code if excluded.match_file(path) or ignored.match_file(path)] == []
    assert excluded.match_file("runs/tiny-cpu/metrics.jsonl") and ignored.match_file("runs/tiny-cpu/metrics.jsonl")
