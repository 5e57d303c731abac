"""The run folder: config.yaml, metrics.jsonl, samples/, checkpoints/, judgements.sqlite; pre-Ray checks."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from rlcm.runs import integrity
from rlcm.runs.durable import append_json_line, read_json_lines, write_json_lines

LOW_DISK_BYTES = 64 * 2**20


class OutputDir:
    """One run's folder. `prepare` is called before Ray starts, so a bad folder costs no start-up time."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.metrics = self.root / "metrics.jsonl"
        self.checkpoints = self.root / "checkpoints"
        self.samples = self.root / "samples"
        self.judgements = self.root / "judgements.sqlite"  # rlcm.runs.judgements.JudgementStore

    def prepare(self, resume: bool) -> None:
        """Refuse to overwrite an earlier run unless resuming; make sure the folder is writable."""
        if self.metrics.is_file() and not resume:
            raise FileExistsError(
                f"{self.root} already holds a run; pass --resume to continue it or choose another --output-dir"
            )
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
        done = integrity.checkpoints(self.root)
        return done[-1] if done else None

    def resume_state(self) -> dict | None:
        """The newest checkpoint's driver state ({epoch, samples_seen, policy_version}) once it passes its
        integrity checks (CheckpointError naming the bad file otherwise), or None when there is none."""
        point = integrity.resume_point(self.root)
        return point.state() if point else None

    def append_metrics(self, row: dict) -> None:
        """One strict-JSON line (NaN -> null), written whole and fsynced."""
        append_json_line(self.metrics, row)

    def truncate_metrics(self, last_epoch: int) -> str | None:
        """Keep the rows of epochs ≤ `last_epoch` (−1: none), so a resumed run writes each epoch once; a torn
        last line (a crash mid-write) is dropped and returned."""
        if not self.metrics.is_file():
            return None
        found = read_json_lines(self.metrics)
        write_json_lines(self.metrics, [r for r in found.rows if r.get("epoch", last_epoch + 1) <= last_epoch])
        return found.torn

    def rows(self) -> list[dict]:
        return read_json_lines(self.metrics).rows


def disk_error(path: Path, error: BaseException) -> OSError | None:
    """An OSError that names the folder and what to do when `error` is a missing/unwritable folder or a full disk, else
    None.

    The errno decides; free space is only consulted for failures that carry none (torch's "file write failed").
    """
    code = getattr(error, "errno", None)
    text = str(error)
    if code == errno.ENOENT:
        return OSError(
            code,
            f"cannot create {path}: a parent folder is missing and cannot be made there ({error.strerror or text}); "
            "choose an --output-dir under a writable folder",
        )
    if code in (errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOTDIR, errno.EEXIST):
        return OSError(code, f"cannot write to {path}: {error.strerror or text}; choose a writable --output-dir")
    try:
        usage = shutil.disk_usage(path if path.exists() else path.parent)
        free = f"{usage.free / 2**20:.0f} MiB free of {usage.total / 2**30:.1f} GiB"
    except OSError:
        usage, free = None, "free space unknown"
    out_of_space = code == errno.ENOSPC or "No space left" in text
    write_failed = code is None and (
        "file write failed" in text or (usage is not None and usage.total > 0 and usage.free < LOW_DISK_BYTES)
    )
    if out_of_space or write_failed:
        return OSError(
            errno.ENOSPC, f"the disk holding {path} is full ({free}); free space or choose another --output-dir"
        )
    return None
