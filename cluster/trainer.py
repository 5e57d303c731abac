"""The training driver's epoch loop: the Ray loop that carries out `cluster.schedule.Scheduler`'s decisions.

One loop for every algorithm (the algorithm's declaration says where an epoch's samples come from):
  1. submit the batches the scheduler releases (a pure function of seed, epoch and batch);
  2. the rollout pool sends them to the least-loaded actor, at most `max_inflight_per_actor` each;
  3. as each batch lands, its images go to the reward scorer while sampling goes on;
  4. an update starts: `rollouts` algorithms (RLCM, GRPO) train on the scheduler's scored batches (an epoch
     without a single valid reward is skipped and logged); `learners` algorithms (ROCM, DRaFT, AlignProp)
     sample their own chains with grad from the training prompts, while the rollout actors sample held-out
     prompts with the current adapter and the reward client scores them (`monitor_*` metrics);
  5. rank 0's new adapter goes to the object store once; sync mode pushes it to every actor.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import ray

from cluster.buffer import Entry
from cluster.control import start_controller
from cluster.epoch_record import check_finite, epoch_row, epoch_times, perf_fields, save_epoch_grid
from cluster.inflight import InFlight
from cluster.interrupts import Interrupted, StopRequest
from cluster.ray_setup import cluster_capacity, free_resources, preflight
from cluster.run_actors import learner_group, resource_requests, rollout_pool, run_flop_model
from cluster.schedule import Scheduler, mean_over_ranks, reward_summary, update_inputs
from cluster.watchdog import Watchdog
from learner.algorithms.rocm.lam_controller import controller_for
from learner.guards import SkipStreak
from rlcm.config.prompts import epoch_prompts, holdout_split, load_prompts
from rlcm.config.schema import TrainConfig, dump_config
from rlcm.runs.checkpoint_record import write_record
from rlcm.runs.durable import atomic_write_text
from rlcm.runs.epochs import epoch_label
from rlcm.runs.folder import OutputDir, disk_error
from rlcm.runs.integrity import DRIVER_STATE, write_checkpoint
from rlcm.runs.progress import EpochProgress


class SkippedTooOften(RuntimeError):
    """Too many consecutive epochs had no valid reward."""


@dataclass
class Update:
    """A running learner update: the ranks' metric refs and the epoch's scored batches (None until taken)."""

    refs: list
    entries: list[Entry] | None
    started: float

    def done(self) -> bool:
        if not self.refs:  # a skipped update (no valid reward): nothing runs
            return True
        ready, pending = ray.wait(self.refs, num_returns=len(self.refs), timeout=0)
        if (
            ready and pending
        ):  # a rank that died (e.g. its node was lost) raises now; the others would wait in all-reduce
            ray.get(ready)
        return not pending


class Trainer(InFlight):
    """Owns the pool, the scheduler and the learners; `run()` trains `config.run.epochs` epochs into `output_dir`."""

    def __init__(self, config: TrainConfig, output_dir: Path, resume: bool = False, stop: StopRequest | None = None):
        self.config = config
        self.stop = stop or StopRequest()  # set by SIGINT/SIGTERM when `train` installed it
        self.algo = config.algo
        self.own_samples = self.algo.source.learners_sample  # else: trains on the rollout actors' samples
        self.out = OutputDir(output_dir)
        self.out.prepare(resume)
        (self.out.root / "config.yaml").write_text(dump_config(config))
        state = self.out.resume_state() if resume else None
        self.start_epoch = state["epoch"] + 1 if state else 0
        self.samples_seen = state["samples_seen"] if state else 0
        if resume:
            self.out.truncate_metrics(self.start_epoch - 1)

        requests = resource_requests(config)
        preflight(requests)
        prompts = load_prompts(config.prompts.source, config.prompts.limit)
        self.train_prompts, rollout_prompts = (
            holdout_split(prompts, min_held=config.sampling.batch_size) if self.own_samples else (prompts, prompts)
        )
        self.learners = learner_group(config, self.out.root)
        self.flop_model = run_flop_model(config)  # perf_tflops_per_gpu and perf_mfu on GPUs the plan knows
        self.pool = rollout_pool(config)
        scale = config.scaleout
        self.num_batches = config.batches_per_update
        self.schedule = Scheduler(
            rollout_prompts,
            config.sampling.batch_size,
            self.num_batches,
            config.run.seed,
            scale.mode,
            scale.max_staleness,
            scale.buffer_batches or 2 * self.num_batches,
            self.start_epoch,
            distinct_prompts=self.own_samples,
            group_size=self.algo.group_size(config),
        )
        self.reward_client = config.reward.client_config(config.reward.monitor if self.own_samples else None)
        self.rewards_pending: dict = {}  # reward ref -> (entry, submit time)
        self.watchdog = Watchdog(free_resources)  # every ref the loop waits on has a deadline
        self.reward_latency: list[float] = []
        self.rescored_batches = 0
        self.reward_retries = 0  # scoring calls sent again (a failed attempt, a replica lost mid-call)
        # key -> Job of each batch in the buffer, to sample it again if its objects are lost
        self.landed_jobs: dict = {}
        self.skipped_in_a_row = 0
        self.nonfinite = SkipStreak(config.run.max_nonfinite_updates, "updates", "run.max_nonfinite_updates")
        self.controller = start_controller(
            output_dir,
            config.resources.num_rollout_actors,
            dataclasses.replace(requests[0], count=1),
            tuple(requests[1:]),
            cluster_capacity(),
        )
        self.last_control = 0.0
        if state:
            self.learners.load(str(self.out.latest_checkpoint()))
        self.version = ray.get(self.learners.rank0.version.remote())
        lam_rule = hasattr(config.settings, "lam")  # ROCM-family settings: λ fixed or by the paper's rule (`lam: auto`)
        self.lam = controller_for(config.settings, state.get("lam") if state else None) if lam_rule else None
        self.progress = EpochProgress(self.out.root, config, self.start_epoch)
        self.rows: list[dict] = []  # the rows written by this trainer

    # ---- the loop -----------------------------------------------------------
    def run(self) -> list[dict]:
        """Train the remaining epochs; returns the metrics rows written this call."""
        self.publish(broadcast=True)
        try:
            rows = self._loop()
        finally:
            self.progress.close()
        if self.stop.requested and (not rows or rows[-1]["epoch"] < self.config.run.epochs - 1):
            self._interrupted()
        return rows

    def _interrupted(self) -> None:
        """After a stop request: checkpoint the last finished epoch (the learners hold exactly its state) and say so."""
        total, last = self.config.run.epochs, self.rows[-1]["epoch"] if self.rows else self.start_epoch - 1
        if last < 0:
            raise Interrupted(
                self.stop.signum,
                f"interrupted during {epoch_label(0, total)}, before any epoch finished; nothing to checkpoint; "
                "continue with --resume (it starts over)",
            )
        checkpoint = self.out.checkpoint(last)
        if not checkpoint.is_dir():
            self.save_checkpoint(last)
        raise Interrupted(
            self.stop.signum,
            f"interrupted after {epoch_label(last, total)}; checkpoint {checkpoint.name}; continue with --resume",
        )

    def _loop(self) -> list[dict]:
        rows, epoch, update = self.rows, self.start_epoch, None
        broadcast = self.config.scaleout.mode == "sync"
        window_start, rollout_done, queue_depth = time.perf_counter(), None, 0
        while epoch < self.config.run.epochs:
            if self.stop.requested and update is None:  # drop the epoch being sampled; an update in flight finishes
                break
            if update is None:
                queue_depth = len(self.schedule.buffer.ready())
                update = self._start_update(epoch)
            if (
                update is not None and update.entries is None
            ):  # learners sample their own: the epoch's monitoring batches
                update.entries = self.schedule.take_update(self.version)
            if update is None or update.entries is None or not update.done():
                self.poll(update.refs[:1] if update else [], timeout=1.0)
                if rollout_done is None and self.pool.pending == 0 and self.schedule.buffer.reserved == 0:
                    rollout_done = time.perf_counter()
                continue
            metrics = mean_over_ranks(ray.get(update.refs)) if update.refs else {"skipped_update": True}
            train_done, time_sync = time.perf_counter(), 0.0
            if self.lam is not None and "divergence_mean" in metrics:
                metrics.update(self.lam.step(metrics["divergence_mean"]))
            if not metrics.get("skipped_update"):
                self.version += 1
                time_sync = self.publish(broadcast=broadcast)
            stats = self.pool.take_stats()
            times = epoch_times(
                self.own_samples,
                self.config.scaleout.mode,
                self.reward_latency,
                stats,
                window_start,
                rollout_done,
                update.started,
                train_done,
                time_sync,
                queue_depth,
            )
            rows.append(self._finish(epoch, update.entries, metrics, times, stats, window_start))
            self.schedule.update_done()
            epoch, update, window_start, rollout_done = epoch + 1, None, time.perf_counter(), None
        return rows

    def _start_update(self, epoch: int) -> Update | None:
        """Start the epoch's update on the learners, or None while its batches are not all scored yet.

        A rollouts epoch without a single valid reward gets an update with no refs (skipped)."""
        if self.own_samples:
            prompts = epoch_prompts(
                self.train_prompts, self.config.run.seed, epoch, self.algo.prompts_per_epoch(self.config)
            )
            lam = () if self.lam is None else (self.lam.lam,)
            return Update(self.learners.train(prompts, *lam), None, time.perf_counter())
        entries = self.schedule.take_update(self.version)
        if entries is None:
            return None
        self.rescore_stale(entries)
        rewards, valid = update_inputs(entries)
        refs = self.learners.train(rewards, valid, *[e.trajectory_ref for e in entries]) if valid.any() else []
        return Update(refs, entries, time.perf_counter())

    def _finish(
        self, epoch: int, entries: list[Entry], metrics: dict, times: dict, stats: dict, epoch_start: float
    ) -> dict:
        """Write the epoch's metrics row, sample grid, tracking and checkpoint."""
        config = self.config
        for e in entries:
            self.landed_jobs.pop(e.key, None)
        summary = reward_summary(entries)
        skipped = bool(metrics.pop("skipped_update", False))
        samples_before = self.samples_seen
        if self.own_samples:  # the learners' own chains are the reward; the rollout actors' held-out samples monitor
            self.samples_seen += self.algo.prompts_per_epoch(config)
            rewards = {"reward_mean": metrics.pop("reward_mean"), "reward_std": metrics.pop("reward_std", float("nan"))}
            rewards.update({f"monitor_{k}": v for k, v in summary.items()})
            rewards["num_invalid"] = summary["num_invalid"]
        else:
            self.samples_seen += 0 if skipped else int(metrics.pop("samples_trained", update_inputs(entries)[1].sum()))
            rewards = summary
        self.skipped_in_a_row = self.skipped_in_a_row + 1 if skipped else 0
        row = epoch_row(
            epoch,
            config,
            rewards,
            metrics,
            times,
            entries,
            stats,
            samples_seen=self.samples_seen,
            policy_version=self.version,
            skipped=skipped,
            buffer=self.schedule.buffer,
            pool=self.pool,
            rescored_batches=self.rescored_batches,
            reward_retries=self.reward_retries,
        )
        row["time_epoch_s"] = time.perf_counter() - epoch_start
        row.update(perf_fields(row, self.samples_seen - samples_before, config.resources.num_learners, self.flop_model))
        grid = None
        try:
            self.out.append_metrics(row)
            if epoch % config.run.sample_grid_every == 0 or epoch == config.run.epochs - 1:
                grid = save_epoch_grid(
                    self.out.samples / f"epoch-{epoch:04d}.png", epoch, config, entries, self.own_samples
                )
            if (epoch + 1) % config.run.save_every == 0 or epoch == config.run.epochs - 1:
                self.save_checkpoint(epoch)
        except (OSError, RuntimeError) as error:  # incl. a learner's failed torch.save (RayTaskError)
            disk = disk_error(self.out.root, error)
            if disk is None:
                raise
            raise disk from error
        self.progress.epoch_done(row, grid)
        check_finite(self.nonfinite, epoch, row)
        if self.skipped_in_a_row >= config.run.max_skipped_updates:
            raise SkippedTooOften(
                f"{self.skipped_in_a_row} epochs in a row had no valid reward (last: "
                f"{epoch_label(epoch, config.run.epochs)}); the reward service is failing or rejecting every image: "
                "check it (e.g. `curl <url>/healthz`), then continue with --resume"
            )
        return row

    def save_checkpoint(self, epoch: int) -> Path:
        """Write checkpoints/epoch-NNNN atomically, with a sha256 manifest (rlcm.runs.integrity)."""
        state = {"epoch": epoch, "samples_seen": self.samples_seen, "policy_version": self.version}
        if self.lam is not None:
            state["lam"] = self.lam.lam  # the next epoch's λ (json keeps floats exact)

        def fill(directory: Path) -> None:
            self.learners.save(str(directory))
            write_record(directory, self.config)  # base model and sampling settings, for rlcm eval / rlcm sample
            atomic_write_text(directory / DRIVER_STATE, json.dumps(state))

        return write_checkpoint(self.out.checkpoint(epoch), fill)

    def shutdown(self) -> None:
        if self.stop.requested:
            self.stop.quiet_dropped_tasks()
        self.pool.shutdown()
        self.learners.shutdown()
        ray.kill(self.controller)
