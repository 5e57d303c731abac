"""Checkpoints, state files and metrics a crash cannot tear; resume checks them before Ray starts; one run per
folder."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from rlcm.commands.main import main
from rlcm.runs.durable import append_json_line, read_json_lines, strict_json
from rlcm.runs.folder import OutputDir
from rlcm.runs.integrity import CheckpointError, problem, resume_point, write_checkpoint


def fill_like_a_learner(directory, epoch=0, samples=8):
    """The files a real checkpoint holds: the LoRA (safetensors), the learner state (torch zip), the driver state."""
    generator = torch.Generator().manual_seed(epoch)
    save_file(
        {f"unet.layer{i}.lora_A.weight": torch.randn(4, 32, generator=generator) for i in range(3)},
        directory / "pytorch_lora_weights.safetensors",
    )
    torch.save(
        {"adapter": {"w": torch.randn(64, 64, generator=generator)}, "version": epoch + 1},
        directory / "learner_state.pt",
    )
    (directory / "driver_state.json").write_text(
        json.dumps({"epoch": epoch, "samples_seen": samples * (epoch + 1), "policy_version": epoch + 1})
    )


def make_run(root, epochs=(0, 1), manifest=True):
    (root / "metrics.jsonl").parent.mkdir(parents=True, exist_ok=True)
    for epoch in epochs:
        append_json_line(root / "metrics.jsonl", {"epoch": epoch, "reward_mean": -1.0})
        final = OutputDir(root).checkpoint(epoch)
        if manifest:
            write_checkpoint(final, lambda d, e=epoch: fill_like_a_learner(d, e))
        else:
            final.mkdir(parents=True)
            fill_like_a_learner(final, epoch)
    return root


def flip_bytes(path, every=4096, count=16):
    data = bytearray(path.read_bytes())
    for start in range(64, len(data), every):
        for i in range(start, min(start + count, len(data))):
            data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path, keep=0.6):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def resume_cli(root, capsys, monkeypatch, *extra):
    """`rlcm train --resume` with the driver replaced: whatever it prints happened before Ray could start."""
    import cluster.restarts

    monkeypatch.setattr(cluster.restarts, "train", lambda *a, **k: [])
    code = main(["train", "--output-dir", str(root), "--resume", "--set", "run.epochs=5", *extra])
    return code, capsys.readouterr()


# ---- files a crash cannot tear ------------------------------------------------------------------


def test_metrics_are_strict_json_with_null_for_non_finite(tmp_path):
    row = {
        "epoch": 1,
        "reward_mean": math.nan,
        "kl": np.float32("inf"),
        "hist": np.array([1.0, np.nan]),
        "ok": np.int64(3),
    }
    assert strict_json(row) == '{"epoch": 1, "reward_mean": null, "kl": null, "hist": [1.0, null], "ok": 3}'
    OutputDir(tmp_path).append_metrics(row)
    assert "NaN" not in (tmp_path / "metrics.jsonl").read_text()
    assert json.loads((tmp_path / "metrics.jsonl").read_text(), parse_constant=pytest.fail)["reward_mean"] is None


def test_a_torn_last_line_is_reported_and_a_bad_middle_line_is_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 0}\n{"epoch": 1}\n{"epoch": 2, "rew')
    found = read_json_lines(path)
    assert [r["epoch"] for r in found.rows] == [0, 1] and found.torn == '{"epoch": 2, "rew'
    path.write_text('{"epoch": 0}\n{"epo\n{"epoch": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl line 2 is not a JSON object"):
        read_json_lines(path)


# ---- checkpoints ---------------------------------------------------------------------------------


def test_checkpoint_is_written_atomically_with_a_manifest(tmp_path):
    final = tmp_path / "checkpoints" / "epoch-0000"

    def crash(directory):
        fill_like_a_learner(directory)
        raise OSError("disk vanished")

    with pytest.raises(OSError):
        write_checkpoint(final, crash)
    assert not final.exists()  # a crash mid-write leaves no epoch-0000 to resume from
    write_checkpoint(final, fill_like_a_learner)
    listed = json.loads((final / "manifest.json").read_text())["files"]
    assert sorted(listed) == ["driver_state.json", "learner_state.pt", "pytorch_lora_weights.safetensors"]
    assert problem(final) is None
    assert sorted(p.name for p in final.parent.iterdir()) == ["epoch-0000"]  # no temporary folders left


@pytest.mark.parametrize("manifest", [True, False], ids=["manifest", "legacy"])
@pytest.mark.parametrize(
    "name, damage, expected",
    [
        ("learner_state.pt", flip_bytes, r"learner_state.pt (does not match the sha256|is corrupted)"),
        ("learner_state.pt", truncate, r"learner_state.pt (has \d+ bytes|is not a complete torch file)"),
        (
            "pytorch_lora_weights.safetensors",
            truncate,
            r"pytorch_lora_weights.safetensors (has \d+ bytes|is truncated)",
        ),
        (
            "driver_state.json",
            lambda p: p.write_text('{"epoch": 1, "sam'),
            r"driver_state.json (has \d+ bytes|is not valid JSON)",
        ),
    ],
)
def test_damaged_checkpoint_file_is_named(tmp_path, manifest, name, damage, expected):
    make_run(tmp_path, epochs=(0,), manifest=manifest)
    damage(tmp_path / "checkpoints" / "epoch-0000" / name)
    assert problem(tmp_path / "checkpoints" / "epoch-0000") is not None
    with pytest.raises(CheckpointError, match=expected):
        resume_point(tmp_path)


def test_resume_refuses_a_corrupted_checkpoint_before_ray_and_offers_the_previous_one(tmp_path, capsys, monkeypatch):
    """The issue's scenario: bytes flipped in epoch-0001/learner_state.pt; today it resumed into NaN."""
    make_run(tmp_path, epochs=(0, 1))
    flip_bytes(tmp_path / "checkpoints" / "epoch-0001" / "learner_state.pt")
    code, out = resume_cli(tmp_path, capsys, monkeypatch)
    assert code == 2 and len(out.err.strip().splitlines()) == 1
    assert "epoch-0001/learner_state.pt does not match the sha256" in out.err
    assert "the previous checkpoint epoch-0000 is intact" in out.err and "epoch-0001.corrupt" in out.err
    (tmp_path / "checkpoints" / "epoch-0001").rename(tmp_path / "checkpoints" / "epoch-0001.corrupt")
    code, out = resume_cli(tmp_path, capsys, monkeypatch)
    assert code == 0 and "resuming from" in out.out and "epoch-0000 (epoch 0/4 done, samples_seen 8)" in out.out
    assert [r["epoch"] for r in OutputDir(tmp_path).rows()] == [0]


def test_resume_names_the_checkpoint_and_drops_a_torn_metrics_line(tmp_path, capsys, monkeypatch):
    make_run(tmp_path, epochs=(0, 1))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "reward_mean": -0.5, "tim')
    code, out = resume_cli(tmp_path, capsys, monkeypatch)
    assert code == 0, out.err
    assert "metrics.jsonl: dropped a torn last line" in out.out
    assert (
        "resuming from" in out.out
        and "epoch-0001 (epoch 1/4 done, samples_seen 16); continuing with epoch 2/4" in out.out
    )
    assert [r["epoch"] for r in OutputDir(tmp_path).rows()] == [0, 1]


def test_resume_of_a_folder_without_a_run_is_an_error(tmp_path, capsys, monkeypatch):
    code, out = resume_cli(tmp_path / "empty", capsys, monkeypatch)
    assert code == 2 and "holds no run" in out.err and "drop --resume" in out.err
    assert not (tmp_path / "empty").exists()


# ---- one live run per folder ---------------------------------------------------------------------

HOLD_LOCK = """
import sys, time
from rlcm.runs.lock import acquire
acquire(sys.argv[1])
print("locked", flush=True)
time.sleep(60)
"""


def test_resume_into_a_running_run_is_refused_and_a_dead_holder_does_not_block(tmp_path, capsys, monkeypatch):
    make_run(tmp_path, epochs=(0,))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, out = resume_cli(tmp_path, capsys, monkeypatch)
        assert code == 2 and "is in use by a running `rlcm train` (pid" in out.err and str(holder.pid) in out.err
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / ".rlcm.lock").is_file()  # left by the killed holder: stale, must not block
    code, out = resume_cli(tmp_path, capsys, monkeypatch)
    assert code == 0 and "resuming from" in out.out


def test_the_scorers_error_text_reaches_the_row_and_the_console_line():
    """Before, a failing scorer left only "no valid reward"; the error said nowhere what failed."""
    from cluster.buffer import Entry, error_text
    from cluster.schedule import Scheduler, reward_summary
    from rewards_service.scorers.base import ScoreResult
    from rlcm.runs.progress import epoch_line

    schedule = Scheduler(["a cat"], 2, 2, 0, "sync", 1, 4)
    failed = ScoreResult.failed(2, "", "HTTP 503 from http://127.0.0.1:8000/v1/score/aesthetic: replica overloaded")
    good = ScoreResult([0.5, 0.7], "jpeg-v1")
    entries = [Entry((0, b), ["a cat"] * 2, None, None, 0) for b in range(2)]
    for entry, result in zip(entries, [failed, good]):
        schedule.scored(entry, result.rewards, result.valid, result.version, error_text(result.details))
    summary = reward_summary(entries)
    assert summary["reward_error"] == "HTTP 503 from http://127.0.0.1:8000/v1/score/aesthetic: replica overloaded"
    assert summary["num_invalid"] == 2 and summary["reward_mean"] == pytest.approx(0.6)
    row = {"epoch": 0, **summary, "samples_seen": 2, "time_epoch_s": 1.0, "approx_kl": 0.0, "clipfrac": 0.0}
    assert epoch_line(row, 3).endswith(
        "samples 2, 2 invalid  reward error: HTTP 503 from http://127.0.0.1:8000/v1/score/aesthetic: replica overloaded"
    )
    assert json.loads(strict_json(row))["reward_error"].startswith("HTTP 503")
    assert reward_summary(entries[1:])["reward_error"] is None
