"""Scale-out on local Ray with the toy model: pool counts, async staleness, faults, resume, scaling, DDP."""

from __future__ import annotations

import json
import math

import pytest
import ray
import torch
from safetensors.torch import load_file

from cluster.control import scale_rollouts
from cluster.restarts import run_with_restarts
from cluster.trainer import SkippedTooOften, Trainer
from rlcm.config.schema import load_config
from tests.toys import assert_same_lora, rows_of

pytestmark = pytest.mark.slow  # end-to-end runs

FAST = [  # the counts below are per batches of 8 (the preset's 16, halved to keep these runs short)
    "sampling.batch_size=8",
    "train.train_batch_size=4",
    "sampling.batches_per_epoch=1",
    "run.sample_grid_every=100",
    "run.save_every=100",
    "scaleout.control_poll_s=0.1",
]


def run(tmp_path, *overrides, hook=None, resume=False):
    """Train with the toy preset; `hook(trainer, epoch)` runs after each epoch's row is written."""
    config = load_config(None, [*FAST, *overrides])
    trainer = Trainer(config, tmp_path, resume=resume)
    if hook:
        finish = trainer._finish

        def finish_then_hook(epoch, *args):
            row = finish(epoch, *args)
            hook(trainer, epoch)
            return row

        trainer._finish = finish_then_hook
    try:
        return trainer.run()
    finally:
        trainer.shutdown()


def assert_exact_counts(rows, per_epoch):
    assert [r["samples_seen"] for r in rows] == [per_epoch * (r["epoch"] + 1) for r in rows]
    assert all(r["num_invalid"] == 0 for r in rows)


def test_two_rollout_actors_exact_counts(ray_local, tmp_path):
    rows = run(tmp_path, "run.epochs=2", "resources.num_rollout_actors=2")
    assert_exact_counts(rows, 16)
    assert all(
        len(r["rollout_actors"]) == 2 and sum(a["images"] for a in r["rollout_actors"].values()) == 16 for r in rows
    )
    assert [r["policy_version"] for r in rows] == [1, 2]
    assert all(r["staleness_hist"] and set(r["behaviour_versions"]) == {r["policy_version"] - 1} for r in rows)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[-1])["time_sync_s"] > 0
    for r in rows:  # throughput in every row (issue 24); no GPU here: no TFLOP/s, MFU or memory peak
        assert sum(a["unet_images"] for a in r["rollout_actors"].values()) == 16 * 4  # H = 4 UNet calls a sample
        assert r["learner_unet_images"] == 16 * 3  # one forward per (sample, action step)
        assert r["perf_samples_per_s"] == pytest.approx(16 / r["time_epoch_s"])
        assert r["perf_unet_images_per_s"] == pytest.approx((16 * 4 + 16 * 3) / r["time_epoch_s"])
        assert not {"perf_tflops_per_gpu", "perf_mfu", "learner_gpu_memory_peak_gb"} & set(r)


def test_async_respects_staleness_bound(ray_local, tmp_path):
    k = 1
    rows = run(
        tmp_path, "run.epochs=4", "scaleout.mode=async", f"scaleout.max_staleness={k}", "scaleout.buffer_batches=3"
    )
    assert_exact_counts(rows, 8)
    for row in rows:
        learner_version = row["policy_version"] - 1  # the version the update started from
        assert all(learner_version - v <= k for v in row["behaviour_versions"])
        assert max(int(s) for s in row["staleness_hist"]) <= k


def test_injected_crash_and_external_kill(ray_local, tmp_path):
    killed = []

    def kill_mid_epoch(trainer, epoch):
        if epoch == 0:
            collect = trainer.pool.collect

            def collect_then_kill(ready):
                done = collect(ready)
                if done and not killed and trainer.pool.inflight:
                    killed.append(
                        trainer.pool.kill_actor(
                            sorted(trainer.pool.slots).index(next(iter(trainer.pool.inflight.values()))[1])
                        )
                    )
                return done

            trainer.pool.collect = collect_then_kill

    rows = run(
        tmp_path,
        "run.epochs=3",
        "resources.num_rollout_actors=2",
        "sampling.batches_per_epoch=2",
        "faults.rollout_crash_after_batches=1",
        hook=kill_mid_epoch,
    )
    assert killed
    assert_exact_counts(rows, 32)
    assert rows[-1]["rollout_failures"] >= 1


def test_scale_rollout_actors_while_running(ray_local, tmp_path):
    """1 → 2 actors after epoch 0; 2 → 1 in epoch 2 as soon as actor 1's batch has landed (the driver acts on it at once
    here, not at its next control poll). Epoch 2's row still counts actor 1's images (issue 28: it lost them)."""
    scaled_down = []

    def scale(trainer, epoch):
        if epoch == 0:
            scale_rollouts(tmp_path, 2)
        if epoch == 1:
            collect = trainer.pool.collect

            def collect_then_scale_down(ready):
                done = collect(ready)
                if not scaled_down and any(d.actor_id == 1 for d in done):
                    scaled_down.append(scale_rollouts(tmp_path, 1))
                    trainer.last_control = 0.0
                    trainer._control()
                return done

            trainer.pool.collect = collect_then_scale_down

    rows = run(tmp_path, "run.epochs=3", "sampling.batches_per_epoch=2", hook=scale)
    assert_exact_counts(rows, 16)
    assert scaled_down and [r["num_rollout_actors"] for r in rows] == [1, 2, 1]
    assert sorted(rows[1]["rollout_actors"]) == ["0", "1"]
    last = rows[2]["rollout_actors"]
    assert sorted(last) == ["0", "1"] and last["1"]["images"] == 8 and sum(a["images"] for a in last.values()) == 16


def test_resume_matches_uninterrupted(ray_local, tmp_path):
    full = run(tmp_path / "full", "run.epochs=3")
    run(tmp_path / "split", "run.epochs=2")
    resumed = run(tmp_path / "split", "run.epochs=3", resume=True)
    assert [r["epoch"] for r in resumed] == [2] and resumed[0]["samples_seen"] == full[-1]["samples_seen"]
    a = load_file(tmp_path / "full/checkpoints/epoch-0002/pytorch_lora_weights.safetensors")
    b = load_file(tmp_path / "split/checkpoints/epoch-0002/pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed[0]["reward_mean"] == pytest.approx(full[-1]["reward_mean"])


def test_learner_killed_run_rebuilt_from_checkpoint_matches_uninterrupted(ray_local, tmp_path, monkeypatch, capsys):
    """Sync mode: the learner is killed (`ray.kill`) once epoch 0's checkpoint is written; `run_with_restarts` rebuilds
    the run from it, every epoch gets one metrics row and the final LoRA equals an uninterrupted run's, bit for bit."""
    config = load_config(None, [*FAST, "run.epochs=3", "run.save_every=1"])
    straight = run_with_restarts(config, tmp_path / "straight")
    killed = []
    finish = Trainer._finish

    def finish_then_kill(trainer, epoch, *args):
        row = finish(trainer, epoch, *args)
        if epoch == 0 and not killed:
            killed.append(trainer.learners.rank0)
            ray.kill(trainer.learners.rank0)
        return row

    monkeypatch.setattr(Trainer, "_finish", finish_then_kill)
    rows = run_with_restarts(config, tmp_path / "killed")
    err = capsys.readouterr().err
    assert len(killed) == 1 and err.count("rlcm: a learner died") == 1
    assert "rebuilding the learners from epoch-0000" in err
    assert [r["epoch"] for r in rows] == [r["epoch"] for r in rows_of(tmp_path / "killed")] == [0, 1, 2]
    assert [r["samples_seen"] for r in rows] == [r["samples_seen"] for r in straight] == [8, 16, 24]
    assert [r["reward_mean"] for r in rows] == [r["reward_mean"] for r in straight]
    assert_same_lora(tmp_path / "straight", tmp_path / "killed", "epoch-0002")


def test_two_learners_through_the_trainer(ray_local, tmp_path):
    """M=2 learners in the driver: each rank trains its half, the adapter advances once per epoch."""
    rows = run(tmp_path, "run.epochs=2", "sampling.batches_per_epoch=2", "resources.num_learners=2", "run.save_every=2")
    assert_exact_counts(rows, 16)
    assert [r["policy_version"] for r in rows] == [1, 2]
    assert all(r["optimizer_steps"] == 2 for r in rows)  # 8 samples per rank in minibatches of 4
    saved = load_file(str(tmp_path / "checkpoints" / "epoch-0001" / "pytorch_lora_weights.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in saved.items())


def test_epoch_without_valid_rewards_is_skipped_and_repeats_stop_the_run(ray_local, tmp_path):
    rows = run(tmp_path / "one", "run.epochs=3", "faults.invalid_reward_epochs=[1]")
    assert [r["skipped_update"] for r in rows] == [False, True, False]
    assert rows[1]["num_invalid"] == 8 and rows[1]["reward_version"] == "" and math.isnan(rows[1]["reward_mean"])
    assert [r["policy_version"] for r in rows] == [1, 1, 2]  # no update, no new adapter
    assert [r["samples_seen"] for r in rows] == [8, 8, 16]
    with pytest.raises(SkippedTooOften, match=r"2 epochs in a row had no valid reward \(last: epoch 2/3\)"):
        run(tmp_path / "two", "run.epochs=4", "faults.invalid_reward_epochs=[1, 2]", "run.max_skipped_updates=2")
    written = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in written] == [0, 1, 2]


def test_resume_without_checkpoint_starts_over_with_clean_metrics(ray_local, tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"epoch": 0}) + "\n" + json.dumps({"epoch": 1}) + "\n")
    rows = run(tmp_path, "run.epochs=2", resume=True)
    written = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in written] == [0, 1] == [r["epoch"] for r in rows]
    assert "reward_mean" in written[0]


def test_batches_go_only_to_placed_rollout_actors(ray_local):
    """A scale-up the cluster cannot place yet (here: a bundle of 64 CPUs) must not take batches."""
    from cluster.rollout_pool import PoolOptions, RolloutPool
    from cluster.schedule import epoch_jobs
    from rollout.worker import RolloutSpec

    config = load_config(None)
    spec = RolloutSpec(model="tiny", lora=config.model.lora, num_steps=2, guidance_scale=8.0)
    pool = RolloutPool(spec, PoolOptions(cpus=0.5, max_inflight=2), size=1)
    try:
        pool.options.cpus = 64.0
        pool.resize(2)
        for job in epoch_jobs(["cat", "dog"], 0, 0, 2, 3):
            pool.submit(job)
        pool.pump()
        placed, waiting = sorted(pool.slots)
        assert pool.slots[placed].load == 2 and pool.slots[waiting].load == 0 and len(pool.queue) == 1
    finally:
        pool.shutdown()
