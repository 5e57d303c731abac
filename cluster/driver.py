"""The training driver: the Ray loop that carries out `cluster.schedule.Scheduler`'s decisions.

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
import functools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray

from cluster.buffer import Entry, error_text
from cluster.checkpoint_record import write_record
from cluster.config import TrainConfig, dump_config
from cluster.control import start_controller
from cluster.durable import atomic_write_text
from cluster.grid import grid_title, save_sample_grid
from cluster.integrity import DRIVER_STATE, write_checkpoint
from cluster.interrupts import Interrupted, StopRequest
from cluster.output import OutputDir, disk_error
from cluster.progress import EpochProgress
from cluster.prompts import epoch_prompts, holdout_split, load_prompts
from cluster.ray_setup import (
    ResourceRequest,
    cluster_capacity,
    free_resources,
    init_ray,
    preflight,
    wait_for_placement_group,
)
from cluster.rollout_pool import PoolOptions, RolloutPool
from cluster.run_lock import run_lock
from cluster.schedule import Scheduler, entries_to_rescore, mean_over_ranks, reward_summary, update_inputs
from cluster.watchdog import StalledError, Watchdog, bounded_get
from learner.group import LearnerGroup
from learner.guards import SkipStreak
from learner.lam_controller import controller_for
from rewards_service.client import RewardClient, RewardClientConfig, RewardUnavailable, build_reward_client
from rewards_service.scorers.base import ScoreResult
from rollout.precision import DTYPES
from rollout.worker import RolloutSpec

_CLIENTS: dict[str, RewardClient] = {}


@ray.remote
def score_images(
    client_config: RewardClientConfig, images: np.ndarray, prompts: list[str], latency_s: float = 0.0
) -> ScoreResult:
    """Score one batch in a Ray worker through a reward client (built once per worker process).

    The client retries with backoff; a batch that still fails comes back with valid=False.
    """
    if latency_s:
        time.sleep(latency_s)
    key = client_config.model_dump_json()
    if key not in _CLIENTS:
        _CLIENTS[key] = build_reward_client(client_config)
    return _CLIENTS[key].score(images, prompts)


def reward_retries(result: ScoreResult) -> int:
    """How many times a batch's scoring call was sent again: failed attempts and calls resent after their replica was
    lost."""
    details = result.details
    return max(details.get("attempts") or [1]) - 1 + max(details.get("replica_resends") or [0])


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


def resource_requests(config: TrainConfig) -> list[ResourceRequest]:
    """What the run asks Ray for, with the config keys that ask for it."""
    r = config.resources
    return [
        ResourceRequest(
            "rollout actors",
            r.num_rollout_actors,
            r.rollout_cpus,
            r.rollout_gpus,
            ("resources.num_rollout_actors", "resources.rollout_cpus", "resources.rollout_gpus"),
        ),
        ResourceRequest(
            "learners",
            r.num_learners,
            r.learner_cpus,
            r.learner_gpus,
            ("resources.num_learners", "resources.learner_cpus", "resources.learner_gpus"),
            config.scaleout.placement_strategy,
        ),
        ResourceRequest("reward scoring", 1, config.reward.num_cpus, 0.0, ("reward.num_cpus",)),
    ]


class Trainer:
    """Owns the pool, the scheduler and the learners; `run()` trains `config.run.epochs` epochs into `output_dir`."""

    def __init__(self, config: TrainConfig, output_dir: Path, resume: bool = False, stop: StopRequest | None = None):
        self.config = config
        self.stop = stop or StopRequest()  # set by SIGINT/SIGTERM when `train` installed it
        self.algo = config.algo
        self.own_samples = self.algo.samples_from == "learners"  # else: trains on the rollout actors' samples
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
        self.learners = self._learner_group()
        self.pool = self._rollout_pool()
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

    def _learner_group(self) -> LearnerGroup:
        config, resources = self.config, self.config.resources
        common = dict(
            model=config.model.name,
            lora=config.model.lora,
            seed=config.run.seed,
            model_seed=config.model.seed,
            dtype=DTYPES[config.model.dtype],
        )
        spec = self.algo.learner_spec(config, common)
        if config.faults.nan_loss_epochs and hasattr(spec, "nan_loss_versions"):
            spec = dataclasses.replace(spec, nan_loss_versions=tuple(config.faults.nan_loss_epochs))
        scale = config.scaleout
        keys = (
            "resources.num_learners",
            "resources.learner_cpus",
            "resources.learner_gpus",
            "scaleout.placement_strategy",
        )
        return LearnerGroup(
            spec,
            resources.num_learners,
            resources.learner_cpus,
            resources.learner_gpus,
            config.run.torch_threads,
            scale.learner_backend,
            scale.placement_strategy,
            functools.partial(
                wait_for_placement_group, timeout_s=scale.placement_timeout_s, what="learners", keys=keys
            ),
        )

    def _rollout_pool(self) -> RolloutPool:
        config, resources, scale = self.config, self.config.resources, self.config.scaleout
        spec = RolloutSpec(
            model=config.model.name,
            lora=config.model.lora,
            num_steps=config.sampling.num_steps,
            guidance_scale=config.sampling.guidance_scale,
            height=config.sampling.height,
            width=config.sampling.width,
            original_inference_steps=config.sampling.original_inference_steps,
            model_seed=config.model.seed,
            dtype=DTYPES[config.model.dtype],
            noise_group_size=self.algo.noise_group_size(config),
            eta=self.algo.eta(config),
        )
        options = PoolOptions(
            cpus=resources.rollout_cpus,
            gpus=resources.rollout_gpus,
            torch_threads=config.run.torch_threads,
            max_inflight=scale.max_inflight_per_actor,
            max_restarts=scale.rollout_max_restarts,
            max_task_retries=scale.rollout_max_task_retries,
            strategy=scale.placement_strategy,
            crash_after_batches=config.faults.rollout_crash_after_batches,
            placement_timeout_s=scale.placement_timeout_s,
        )
        return RolloutPool(spec, options, resources.num_rollout_actors)

    # ---- the pieces ---------------------------------------------------------
    def score_batch(self, images_ref, prompts: list[str]) -> ray.ObjectRef:
        """The one place rewards are requested: ObjectRef of a ScoreResult for one batch."""
        reward = self.config.reward
        return score_images.options(num_cpus=reward.num_cpus).remote(
            self.reward_client, images_ref, prompts, self.config.faults.reward_latency_s
        )

    def rescore_stale(self, entries: list[Entry]) -> None:
        """One update never mixes reward versions: after a hot swap, re-score what an older version scored
        (the images are still in the object store) until every entry carries the newest."""
        for _ in range(3):
            stale = entries_to_rescore(entries)
            if not stale:
                return
            reward = self.config.reward
            results = bounded_get(
                [self.score_batch(e.images_ref, e.prompts) for e in stale],
                reward.timeout_s,
                f"re-scoring {len(stale)} batch(es)",
                "reward.timeout_s",
                ("reward.num_cpus",),
                free_resources,
            )
            for entry, result in zip(stale, results):
                self.schedule.scored(entry, result.rewards, result.valid, result.version, error_text(result.details))
            self.rescored_batches += len(stale)
        raise RuntimeError(
            f"reward versions kept changing while re-scoring: {sorted({e.reward_version for e in entries})}"
        )

    def publish(self, broadcast: bool) -> float:
        """Put rank 0's adapter in the object store once; new batches carry it (sync: pushed to every actor now)."""
        start = time.perf_counter()
        adapter_ref = self.learners.adapter()
        ray.wait([adapter_ref], fetch_local=False)
        self.pool.set_adapter(self.version, adapter_ref)
        if broadcast:
            self.pool.broadcast()
        return time.perf_counter() - start

    def poll(self, extra: list, timeout: float) -> None:
        """Submit what the scheduler releases, dispatch, wait for any batch, reward or `extra` ref, file what landed."""
        self._control()
        stopping = (
            self.stop.requested and not self.own_samples
        )  # (an own-samples update still needs its monitoring batches)
        for job in [] if stopping else self.schedule.to_submit():
            self.pool.submit(job)
        self.pool.pump()
        refs = [*self.pool.wait_refs(), *self.rewards_pending, *extra]
        self._watch(extra)
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in ready:
            self.watchdog.done(ref)
        reward = self.config.reward
        for done in self.pool.collect(ready):
            entry = Entry(
                done.job.key, done.job.prompts, done.trajectory_ref, done.images_ref, done.info["policy_version"]
            )
            self.landed_jobs[entry.key] = done.job
            entry.reward_ref = self.score_batch(done.images_ref, done.job.prompts)
            self.schedule.landed(entry)
            self.rewards_pending[entry.reward_ref] = (entry, time.perf_counter())
            what = f"reward scoring of batch {entry.key} ({reward.num_cpus:g} CPU)"
            if reward.backend == "serve":
                what += f" through Serve deployment {self.reward_client.reward!r} of app {reward.app_name!r}"
            self.watchdog.start(entry.reward_ref, what, reward.timeout_s, "reward.timeout_s", ("reward.num_cpus",))
        for ref in [r for r in ready if r in self.rewards_pending]:
            entry, submitted = self.rewards_pending.pop(ref)
            try:
                result: ScoreResult = ray.get(ref, timeout=reward.timeout_s)
            except ray.exceptions.RayError as error:
                self._scoring_failed(entry, error)
                continue
            self.reward_retries += reward_retries(result)
            if entry.key[0] in self.config.faults.invalid_reward_epochs:
                result = ScoreResult.failed(len(entry.prompts), "", "injected by faults.invalid_reward_epochs")
            self.schedule.scored(entry, result.rewards, result.valid, result.version, error_text(result.details))
            self.reward_latency.append(time.perf_counter() - submitted)
        self.pool.pump()
        self.watchdog.check()

    def _scoring_failed(self, entry: Entry, error: ray.exceptions.RayError) -> None:
        """A batch's images were lost with their node (and Ray could not rebuild them): sample the batch again. No live
        reward replica within reward.timeout_s: stop with one line. Anything else is raised as it is."""
        cause = getattr(error, "cause", None)
        if isinstance(error, ray.exceptions.ObjectLostError) or isinstance(cause, ray.exceptions.ObjectLostError):
            job = self.landed_jobs.pop(entry.key, None)
            if job is None or entry.key not in self.schedule.buffer.entries:  # async: already dropped as stale
                return
            self.schedule.buffer.resample(entry.key)
            self.pool.requeue(job)
            print(
                f"rlcm: the images of batch {entry.key} were lost ({type(cause or error).__name__}: their node is "
                "gone); sampling the batch again",
                file=sys.stderr,
                flush=True,
            )
            return
        if isinstance(cause, RewardUnavailable):
            raise StalledError(
                f"reward scoring of batch {entry.key}: {cause}; free on the cluster now: {free_resources()}"
            ) from None
        raise error

    def _watch(self, extra: list) -> None:
        """Deadlines for the rollout batches in flight and the learner update (`extra`); rewards get theirs when
        submitted."""
        limit, r = self.config.scaleout.call_timeout_s, self.config.resources
        for ref in [k for k, d in self.watchdog.deadlines.items() if d.limit_key == "scaleout.call_timeout_s"]:
            if ref not in self.pool.inflight and ref not in extra:  # a batch queued again, an update finished
                self.watchdog.done(ref)
        for ref, (job, actor_id, *_) in self.pool.inflight.items():
            if ref not in self.watchdog.deadlines:
                what = (
                    f"rollout batch {job.key} on rollout actor {actor_id} ({r.rollout_cpus:g} CPU, "
                    f"{r.rollout_gpus:g} GPU)"
                )
                self.watchdog.start(
                    ref, what, limit, "scaleout.call_timeout_s", ("resources.rollout_cpus", "resources.rollout_gpus")
                )
        for ref in extra:
            if ref not in self.watchdog.deadlines:
                what = f"the learner update ({r.num_learners} × {r.learner_cpus:g} CPU, {r.learner_gpus:g} GPU)"
                self.watchdog.start(
                    ref, what, limit, "scaleout.call_timeout_s", ("resources.learner_cpus", "resources.learner_gpus")
                )

    def _control(self) -> None:
        now = time.perf_counter()
        if now - self.last_control >= self.config.scaleout.control_poll_s:
            self.last_control = now
            self.pool.resize(ray.get(self.controller.rollout_actors.remote()))

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
                f"interrupted during epoch 1/{total}, before any epoch finished; nothing to checkpoint; "
                "continue with --resume (it starts over)",
            )
        checkpoint = self.out.checkpoint(last)
        if not checkpoint.is_dir():
            self.save_checkpoint(last)
        raise Interrupted(
            self.stop.signum,
            f"interrupted after epoch {last + 1}/{total}; checkpoint {checkpoint.name}; continue with --resume",
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
            times = self._times(window_start, rollout_done, update.started, train_done, time_sync, queue_depth, stats)
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

    def _times(self, window_start, rollout_done, train_start, train_done, time_sync, queue_depth, stats) -> dict:
        if self.own_samples:  # rollouts only monitor, beside the learners: their busy time and the reward latency
            times = {
                "time_rollout_s": float(np.mean([s["busy_s"] for s in stats.values()])) if stats else 0.0,
                "time_reward_s": float(np.mean(self.reward_latency)) if self.reward_latency else 0.0,
                "time_train_s": train_done - train_start,
                "time_sync_s": time_sync,
            }
            self.reward_latency.clear()
            return times
        rollout_done = rollout_done or train_start
        times = {
            "time_rollout_s": rollout_done - window_start,
            "time_reward_s": max(0.0, train_start - rollout_done),
            "time_train_s": train_done - train_start,
            "time_sync_s": time_sync,
        }
        if self.config.scaleout.mode == "async":
            window = max(time.perf_counter() - window_start, 1e-9)
            times["learner_idle_ratio"] = max(0.0, 1.0 - times["time_train_s"] / window)
            times["queue_depth"] = queue_depth
        return times

    # ---- bookkeeping --------------------------------------------------------
    def _finish(
        self, epoch: int, entries: list[Entry], metrics: dict, times: dict, stats: dict, epoch_start: float
    ) -> dict:
        """Write the epoch's metrics row, sample grid, tracking and checkpoint."""
        config = self.config
        for e in entries:
            self.landed_jobs.pop(e.key, None)
        summary = reward_summary(entries)
        skipped = bool(metrics.pop("skipped_update", False))
        if self.own_samples:  # the learners' own chains are the reward; the rollout actors' held-out samples monitor
            self.samples_seen += self.algo.prompts_per_epoch(config)
            rewards = {"reward_mean": metrics.pop("reward_mean"), "reward_std": metrics.pop("reward_std", float("nan"))}
            rewards.update({f"monitor_{k}": v for k, v in summary.items()})
            rewards["num_invalid"] = summary["num_invalid"]
        else:
            self.samples_seen += 0 if skipped else int(metrics.pop("samples_trained", update_inputs(entries)[1].sum()))
            rewards = summary
        self.skipped_in_a_row = self.skipped_in_a_row + 1 if skipped else 0
        row = {
            "epoch": epoch,
            "algorithm": config.algorithm,
            **rewards,
            "samples_seen": self.samples_seen,
            "policy_version": self.version,
            "skipped_update": skipped,
            "mode": config.scaleout.mode,
            **times,
            **metrics,
            "behaviour_versions": sorted({e.policy_version for e in entries}),
            "staleness_hist": {str(k): v for k, v in sorted(self.schedule.buffer.staleness_hist.items())},
            "dropped_stale": self.schedule.buffer.dropped_stale,
            "rollout_actors": stats,
            "num_rollout_actors": self.pool.size,
            "rollout_idle_ratio": float(np.mean([s["idle_ratio"] for s in stats.values()])) if stats else 0.0,
            "rollout_failures": self.pool.failures,
            "rescored_batches": self.rescored_batches,
            "resampled_batches": self.pool.requeued,
            "reward_retries": self.reward_retries,
        }
        row["time_epoch_s"] = time.perf_counter() - epoch_start
        grid = None
        try:
            self.out.append_metrics(row)
            if epoch % config.run.sample_grid_every == 0 or epoch == config.run.epochs - 1:
                grid = self._save_grid(epoch, entries)
            if (epoch + 1) % config.run.save_every == 0 or epoch == config.run.epochs - 1:
                self.save_checkpoint(epoch)
        except (OSError, RuntimeError) as error:  # incl. a learner's failed torch.save (RayTaskError)
            disk = disk_error(self.out.root, error)
            if disk is None:
                raise
            raise disk from error
        self.progress.epoch_done(row, grid)
        self._check_finite(epoch, row)
        if self.skipped_in_a_row >= config.run.max_skipped_updates:
            raise SkippedTooOften(
                f"{self.skipped_in_a_row} epochs in a row had no valid reward (last: epoch "
                f"{epoch + 1}/{config.run.epochs}); the reward service is failing or rejecting every image: check it "
                "(e.g. `curl <url>/healthz`), then continue with --resume"
            )
        return row

    def _check_finite(self, epoch: int, row: dict) -> None:
        """Say which optimizer steps were skipped for non-finite numbers; stop after too many fully skipped updates."""
        skipped, steps = int(row.get("nonfinite_steps") or 0), int(row.get("optimizer_steps") or 0)
        if skipped:
            print(
                f"rlcm: epoch {epoch + 1}: {skipped} of {steps} optimizer steps skipped (non-finite loss or gradients; "
                "not applied)",
                file=sys.stderr,
                flush=True,
            )
        self.nonfinite.record(
            f"epoch {epoch + 1}: all {steps} steps non-finite" if steps and skipped == steps else None
        )

    def _save_grid(self, epoch: int, entries: list[Entry]) -> np.ndarray:
        shown = entries[:2]
        images = np.concatenate(ray.get([e.images_ref for e in shown]))
        prompts = [p for e in shown for p in e.prompts]
        rewards = np.concatenate([e.rewards for e in shown]).tolist()
        reward, what = (
            (self.config.reward.monitor or self.config.reward.name, "held-out monitor")
            if self.own_samples
            else (self.config.reward.name, "")
        )
        title = grid_title(epoch, self.config.run.epochs, reward, rewards, what)
        return save_sample_grid(self.out.samples / f"epoch-{epoch:04d}.png", images, prompts, rewards, title=title)

    def save_checkpoint(self, epoch: int) -> Path:
        """Write checkpoints/epoch-NNNN atomically, with a sha256 manifest (cluster.integrity)."""
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


def train(
    config: TrainConfig, output_dir: Path, resume: bool = False, verbose: bool = False, address: str | None = None
) -> list[dict]:
    """Run training on the Ray cluster at `address` or RAY_ADDRESS, else on a fresh local one."""
    OutputDir(output_dir).prepare(resume)
    stop = StopRequest()
    with run_lock(output_dir):
        print(f"rlcm: {init_ray(address, quiet=not verbose, log_to_driver=verbose)}")
        with stop.installed():  # after ray.init: a Ray it starts replaces SIGTERM's handler with one that exits at once
            return run_with_restarts(config, output_dir, resume, stop)


def run_with_restarts(
    config: TrainConfig, output_dir: Path, resume: bool = False, stop: StopRequest | None = None
) -> list[dict]:
    """Train; when a learner dies (its node lost, OOM), rebuild everything from the newest checkpoint and go on,
    at most `scaleout.learner_max_restarts` times. Returns the rows of the epochs trained by this call."""
    rows: list[dict] = []
    for attempt in range(config.scaleout.learner_max_restarts + 1):
        trainer = Trainer(config, output_dir, resume=resume or attempt > 0, stop=stop)
        rows = [r for r in rows if r["epoch"] < trainer.start_epoch]
        try:
            return rows + trainer.run()
        except ray.exceptions.RayError as error:
            what = _learner_loss(error)
            if what is None:
                raise
            rows += trainer.rows
            if attempt == config.scaleout.learner_max_restarts:
                raise RuntimeError(
                    f"{what} {attempt + 1} time(s), the last: {_first_line(error)}; raise "
                    "scaleout.learner_max_restarts or check the learner nodes, then continue with --resume"
                ) from error
            checkpoint = trainer.out.latest_checkpoint()
            print(
                f"rlcm: {what} ({_first_line(error)}); rebuilding the learners from "
                f"{checkpoint.name if checkpoint else 'scratch (no checkpoint yet)'} "
                f"(restart {attempt + 1} of scaleout.learner_max_restarts={config.scaleout.learner_max_restarts})",
                file=sys.stderr,
                flush=True,
            )
        finally:
            trainer.shutdown()
    return rows


def _learner_loss(error: BaseException) -> str | None:
    """What a learner update lost: the learner itself, or its trajectories (lost with their node, not rebuilt by Ray),
    which the newest checkpoint's epoch samples again; None for any other error."""
    if isinstance(error, ray.exceptions.RayActorError):
        return "a learner died"
    if isinstance(error, ray.exceptions.ObjectLostError) or isinstance(
        getattr(error, "cause", None), ray.exceptions.ObjectLostError
    ):
        return "an update's trajectories were lost with their node"
    return None


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:200]
