"""The run folder: config.yaml, metrics.jsonl, samples/, checkpoints/; checks made before Ray starts."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

LOW_DISK_BYTES = 64 * 2**20


class OutputDir:
    """One run's folder. `prepare` is called before Ray starts, so a bad folder costs no start-up time."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.metrics = self.root / "metrics.jsonl"
        self.checkpoints = self.root / "checkpoints"
        self.samples = self.root / "samples"

    def prepare(self, resume: bool) -> None:
        """Refuse to overwrite an earlier run unless resuming; make sure the folder is writable."""
        if self.metrics.is_file() and not resume:
            raise FileExistsError(f"{self.root} already holds a run; pass --resume to continue it or choose another --output-dir")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".rlcm-write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as error:
            raise (disk_error(self.root, error) or error) from None

    def checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch-{epoch:04d}"

    def latest_checkpoint(self) -> Path | None:
        done = sorted(p for p in self.checkpoints.glob("epoch-*") if (p / "driver_state.json").is_file())
        return done[-1] if done else None

    def resume_state(self) -> dict | None:
        """The newest checkpoint's driver state ({epoch, samples_seen, policy_version}), or None."""
        checkpoint = self.latest_checkpoint()
        return json.loads((checkpoint / "driver_state.json").read_text()) if checkpoint else None

    def append_metrics(self, row: dict) -> None:
        with self.metrics.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def truncate_metrics(self, last_epoch: int) -> None:
        """Keep the rows of epochs ≤ `last_epoch` (−1: none), so a resumed run writes each epoch once."""
        if self.metrics.is_file():
            rows = [line for line in self.metrics.read_text().splitlines() if line and json.loads(line)["epoch"] <= last_epoch]
            self.metrics.write_text("".join(r + "\n" for r in rows))

    def rows(self) -> list[dict]:
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line]


def disk_error(path: Path, error: BaseException) -> OSError | None:
    """An OSError that names the folder and what to do when `error` is a missing/unwritable folder or a full disk, else None.

    The errno decides; free space is only consulted for failures that carry none (torch's "file write failed").
    """
    code = getattr(error, "errno", None)
    text = str(error)
    if code == errno.ENOENT:
        return OSError(code, f"cannot create {path}: a parent folder is missing and cannot be made there ({error.strerror or text}); "
                             "choose an --output-dir under a writable folder")
    if code in (errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOTDIR, errno.EEXIST):
        return OSError(code, f"cannot write to {path}: {error.strerror or text}; choose a writable --output-dir")
    try:
        usage = shutil.disk_usage(path if path.exists() else path.parent)
        free = f"{usage.free / 2**20:.0f} MiB free of {usage.total / 2**30:.1f} GiB"
    except OSError:
        usage, free = None, "free space unknown"
    out_of_space = code == errno.ENOSPC or "No space left" in text
    write_failed = code is None and ("file write failed" in text or (usage is not None and usage.total > 0 and usage.free < LOW_DISK_BYTES))
    if out_of_space or write_failed:
        return OSError(errno.ENOSPC, f"the disk holding {path} is full ({free}); free space or choose another --output-dir")
    return None
