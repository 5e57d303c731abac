"""Checkpoints that are whole or absent, and a resume that checks them before Ray starts.

Writing (`write_checkpoint`): every file goes into a hidden sibling folder `.epoch-NNNN.partial`, then
`manifest.json` (sha256 and size of each file) is written, and only then is the folder renamed to
`epoch-NNNN`: a crash leaves either no `epoch-NNNN` or a complete one.

Reading (`resume_point`): the newest `epoch-NNNN` is checked against its manifest (a checkpoint written
before manifests existed gets structural checks: JSON parses, safetensors header and length, the CRCs of a
torch zip file). A bad file is named, with the previous checkpoint that passes the same checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rlcm.runs.durable import atomic_write_text, fsync_dir, read_json_lines, write_json_lines
from rlcm.runs.epochs import epoch_label

MANIFEST = "manifest.json"
DRIVER_STATE = "driver_state.json"
CHECKPOINT_NAME = re.compile(r"^epoch-(\d+)$")
STATE_KEYS = ("epoch", "samples_seen", "policy_version")


class CheckpointError(ValueError):
    """A checkpoint (or the run folder) cannot be resumed from; the message names the file and what to do."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(directory: Path) -> dict:
    """Write `manifest.json`: {"files": {relative path: {"sha256", "bytes"}}} of every other file in `directory`."""
    files = {
        p.relative_to(directory).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in _files(directory)
    }
    manifest = {"format": 1, "files": files}
    atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def write_checkpoint(final: Path, fill: Callable[[Path], None]) -> Path:
    """Create checkpoint folder `final` atomically: `fill(folder)` writes the files into a temporary sibling,
    the manifest is added, and the folder is renamed into place last (an older `final` is replaced)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f".{final.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    fill(partial)
    write_manifest(partial)
    for path in _files(partial):  # the data reached the disk before the rename that publishes it
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(partial)
    replaced = final.with_name(f".{final.name}.replaced")
    if final.exists():
        shutil.rmtree(replaced, ignore_errors=True)
        final.rename(replaced)
    partial.rename(final)
    fsync_dir(final.parent)
    shutil.rmtree(replaced, ignore_errors=True)
    return final


# ---- checking ------------------------------------------------------------------------------------


def checkpoints(root: Path) -> list[Path]:
    """The run's checkpoint folders `checkpoints/epoch-NNNN`, oldest first (temporary and set-aside folders
    excluded)."""
    folder = Path(root) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and CHECKPOINT_NAME.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_NAME.match(p.name).group(1)))


def problem(directory: Path) -> str | None:
    """What is wrong with checkpoint `directory` (naming the file), or None if it passes."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if manifest_path.is_file():
        try:
            listed = json.loads(manifest_path.read_text())["files"]
        except (ValueError, KeyError, TypeError) as error:
            return f"{manifest_path} is damaged ({error})"
        for name, expected in sorted(listed.items()):
            path = directory / name
            if not path.is_file():
                return f"{path} is missing (listed in {MANIFEST})"
            size = path.stat().st_size
            if size != expected["bytes"]:
                return f"{path} has {size} bytes, its manifest says {expected['bytes']} (truncated or overwritten)"
            if sha256_file(path) != expected["sha256"]:
                return f"{path} does not match the sha256 in its manifest (the file is corrupted)"
    else:
        for path in _files(directory):
            if (found := _structural_problem(path)) is not None:
                return found
    return _state_problem(directory / DRIVER_STATE)


def _state_problem(path: Path) -> str | None:
    if not path.is_file():
        return f"{path} is missing"
    try:
        state = json.loads(path.read_text())
    except ValueError as error:
        return f"{path} is not valid JSON ({error}); the file is torn"
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or not isinstance(state.get(k), int)]
    return f"{path} lacks {', '.join(missing)}" if missing else None


def _structural_problem(path: Path) -> str | None:
    """Checks for files of checkpoints without a manifest: JSON parses, safetensors is whole, a torch zip's CRCs
    match."""
    try:
        if path.suffix == ".json":
            try:
                json.loads(path.read_text())
            except ValueError as error:
                return f"{path} is not valid JSON ({error}); the file is torn"
        elif path.suffix == ".safetensors":
            return _safetensors_problem(path)
        elif path.suffix == ".pt":
            if not zipfile.is_zipfile(path):
                return f"{path} is not a complete torch file (truncated?)"
            with zipfile.ZipFile(path) as archive:
                if (bad := archive.testzip()) is not None:
                    return f"{path} is corrupted (member {bad} fails its CRC)"
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        return f"{path} cannot be read ({error})"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file is an 8-byte header length, a JSON header, and exactly the bytes the header's offsets end
    at."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{path} is truncated ({size} bytes)"
        length = struct.unpack("<Q", head)[0]
        if length > size - 8:
            return f"{path} is truncated (header of {length} bytes in a file of {size})"
        try:
            header = json.loads(f.read(length))
        except ValueError:
            return f"{path} has a damaged header"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + length + end != size:
        return f"{path} is truncated ({size} bytes, its header describes {8 + length + end})"
    return None


# ---- resuming ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run continues: the checked checkpoint and its driver state."""

    checkpoint: Path
    epoch: int  # the last finished epoch (0-based, as in the folder name)
    samples_seen: int
    policy_version: int
    extra: tuple[tuple[str, object], ...] = ()  # the driver state's other keys (e.g. ROCM's next λ), as written

    def state(self) -> dict:
        return {
            **dict(self.extra),
            "epoch": self.epoch,
            "samples_seen": self.samples_seen,
            "policy_version": self.policy_version,
        }


def holds_run(root: Path) -> bool:
    """True when `root` holds something `rlcm train` wrote (metrics, a checkpoint or the resolved config)."""
    root = Path(root)
    return any((root / name).exists() for name in ("metrics.jsonl", "checkpoints", "config.yaml"))


def require_run(root: Path) -> None:
    """CheckpointError unless `root` holds a run to resume."""
    if not holds_run(root):
        raise CheckpointError(
            f"--resume: {root} holds no run (no metrics.jsonl, checkpoints/ or config.yaml); drop --resume to start "
            "one there"
        )


def resume_point(root: Path) -> ResumePoint | None:
    """The newest checkpoint of the run in `root`, checked; None when the run has none yet (it starts over).

    CheckpointError when the newest checkpoint fails its checks (naming the file and the newest earlier
    checkpoint that passes).
    """
    found = checkpoints(root)
    if not found:
        return None
    newest = found[-1]
    if (bad := problem(newest)) is not None:
        earlier = next((c for c in reversed(found[:-1]) if problem(c) is None), None)
        aside = f"{newest}.corrupt"
        offer = (
            f"the previous checkpoint {earlier.name} is intact: `mv {newest} {aside}` and rerun with --resume to "
            "continue from it"
            if earlier
            else f"no earlier checkpoint is intact; `mv {newest} {aside}` and rerun with --resume to start over in "
            "this folder"
        )
        raise CheckpointError(f"cannot resume from {newest.name}: {bad}; {offer}")
    state = json.loads((newest / DRIVER_STATE).read_text())
    extra = tuple((k, v) for k, v in sorted(state.items()) if k not in STATE_KEYS)
    return ResumePoint(newest, state["epoch"], state["samples_seen"], state["policy_version"], extra)


def prepare_resume(root: Path, total_epochs: int) -> tuple[ResumePoint | None, list[str]]:
    """Everything `--resume` checks and repairs before Ray starts: the folder holds a run, its newest checkpoint
    passes, metrics.jsonl keeps the rows up to that checkpoint (a torn last line is dropped). Returns the resume
    point and the lines to tell the user (which checkpoint, which epoch; what was dropped)."""
    root = Path(root)
    require_run(root)
    point = resume_point(root)
    notes = []
    metrics = root / "metrics.jsonl"
    if metrics.is_file():
        found = read_json_lines(metrics)
        last = point.epoch if point else -1
        if found.torn is not None:
            notes.append(f"{metrics}: dropped a torn last line ({len(found.torn)} characters) left by a crash")
        kept = [r for r in found.rows if isinstance(r.get("epoch"), int) and r["epoch"] <= last]
        if found.torn is not None or len(kept) != len(found.rows):
            write_json_lines(metrics, kept)
    if point is None:
        notes.append(f"{root} has no checkpoint yet; starting over at {epoch_label(0, total_epochs)}")
    elif point.epoch + 1 < total_epochs:
        notes.append(
            f"resuming from {point.checkpoint} ({epoch_label(point.epoch, total_epochs)} done, samples_seen "
            f"{point.samples_seen}); continuing with {epoch_label(point.epoch + 1, total_epochs)}"
        )
    return point, notes
