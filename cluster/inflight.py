"""The work in flight while the loop waits: rollout batches submitted and dispatched, their rewards requested (again
after a reward hot swap), lost images sampled again, every ref under a deadline, the rollout pool resized on request.

`InFlight` is the part of `cluster.trainer.Trainer` that `poll` drives; the attributes it uses are the trainer's.
"""

from __future__ import annotations

import sys
import time

import ray

from cluster.buffer import Entry, error_text
from cluster.ray_setup import free_resources
from cluster.reward_scoring import reward_retries, score_images
from cluster.schedule import entries_to_rescore
from cluster.watchdog import StalledError, bounded_get
from rewards_service.client import RewardUnavailable
from rewards_service.scorers.base import ScoreResult


class InFlight:
    """Submitting, dispatching, scoring and watching the batches of the trainer's scheduler and rollout pool."""

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
