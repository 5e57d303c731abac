"""`RolloutPool`: N rollout actors, least-loaded dispatch with bounded in-flight work, failure recovery, resizing.

Each actor gets its own placement group (one bundle), so actors can be added and removed one by one.
A batch whose actor died is queued again at the front: its prompts and seed are a pure function of
its key, so the retry is identical and it is counted once. A dead actor is replaced by a new one.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass, field

import ray
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.ray_setup import wait_for_placement_group
from cluster.schedule import Job
from learner.group import bundle
from rollout.actor import RolloutActor
from rollout.worker import RolloutSpec


def _reason(error: BaseException) -> str:
    """The first line of a Ray actor error, e.g. "The actor is temporarily unavailable: ..."."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:160]


@dataclass
class Done:
    job: Job
    actor_id: int
    trajectory_ref: object
    images_ref: object
    info: dict


@dataclass
class Slot:
    handle: object
    pg: object
    load: int = 0
    draining: bool = False
    images: int = 0
    unet_images: int = 0
    gpu_memory_peak_gb: float | None = None  # the actor's, over its batches since the last stats (None: no GPU)
    busy_s: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    placed: bool = False

    def is_placed(self) -> bool:
        """Whether Ray has placed this actor's bundle (remembered once true); batches go only to placed actors."""
        self.placed = self.placed or self.pg is None or placement_group_table(self.pg)["state"] == "CREATED"
        return self.placed

    def stats(self, now: float) -> dict[str, float]:
        """Images, UNet images, busy seconds, images/s, idle ratio (and on a GPU the peak memory) since `started`."""
        wall = max(now - self.started, 1e-9)
        memory = {} if self.gpu_memory_peak_gb is None else {"gpu_memory_peak_gb": self.gpu_memory_peak_gb}
        return {
            "images": self.images,
            "unet_images": self.unet_images,
            "busy_s": round(self.busy_s, 4),
            "images_per_s": self.images / self.busy_s if self.busy_s else 0.0,
            "idle_ratio": max(0.0, 1.0 - self.busy_s / wall),
            **memory,
        }


@dataclass
class PoolOptions:
    cpus: float = 1.0
    gpus: float = 0.0
    torch_threads: int | None = None
    max_inflight: int = 2
    max_restarts: int = 3
    max_task_retries: int = 2
    strategy: str = "PACK"
    crash_after_batches: int | None = None
    placement_timeout_s: float = 600.0


class RolloutPool:
    def __init__(self, spec: RolloutSpec, options: PoolOptions, size: int):
        self.spec, self.options = spec, options
        self.slots: dict[int, Slot] = {}
        self.retired: dict[
            str, dict[str, float]
        ] = {}  # stats of actors stopped since the last take_stats, that sampled
        self.queue: deque[Job] = deque()
        self.inflight: dict = {}  # info ref -> (job, actor id, trajectory ref, images ref)
        self.probes: dict = {}  # ping ref -> actor id (actors whose batch failed)
        self.adapter: tuple[int, list] = (-1, [None])
        self.next_id = 0
        self.failures = 0
        self.requeued = 0  # batches sent again: their actor failed while sampling them, or their objects were lost
        self.resize(size)
        for slot in self.slots.values():
            if slot.pg is not None:
                wait_for_placement_group(
                    slot.pg,
                    options.placement_timeout_s,
                    "rollout actors",
                    ("resources.num_rollout_actors", "resources.rollout_cpus", "resources.rollout_gpus"),
                )

    # ---- membership -------------------------------------------------------
    def _start_actor(self) -> None:
        o, actor_id = self.options, self.next_id
        self.next_id += 1
        resources = bundle(o.cpus, o.gpus)
        pg = placement_group([resources], strategy=o.strategy) if resources else None
        strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0) if pg else None
        crash = o.crash_after_batches if actor_id == 0 else None
        handle = RolloutActor.options(
            num_cpus=o.cpus,
            num_gpus=o.gpus,
            max_restarts=o.max_restarts,
            max_task_retries=o.max_task_retries,
            scheduling_strategy=strategy,
        ).remote(self.spec, o.torch_threads, crash)
        self.slots[actor_id] = Slot(handle, pg)

    def _stop_actor(self, actor_id: int) -> None:
        slot = self.slots.pop(actor_id)
        if slot.images:  # it sampled since the last take_stats: the epoch's row still counts it
            self.retired[str(actor_id)] = slot.stats(time.perf_counter())
        ray.kill(slot.handle)
        if slot.pg is not None:
            remove_placement_group(slot.pg)

    @property
    def size(self) -> int:
        return sum(not s.draining for s in self.slots.values())

    def resize(self, target: int) -> None:
        """Start actors, or drain the newest ones (they finish their in-flight batches, then stop)."""
        target = max(1, target)
        for actor_id in sorted(self.slots):
            if self.slots[actor_id].draining and self.size < target:
                self.slots[actor_id].draining = False
        while self.size < target:
            self._start_actor()
        active = sorted(i for i, s in self.slots.items() if not s.draining)
        for actor_id in active[target:]:
            self.slots[actor_id].draining = True
        self._reap()

    def _reap(self) -> None:
        for actor_id in [i for i, s in self.slots.items() if s.draining and s.load == 0 and not self._probing(i)]:
            self._stop_actor(actor_id)

    def _probing(self, actor_id: int) -> bool:
        return actor_id in self.probes.values()

    # ---- adapter ----------------------------------------------------------
    def set_adapter(self, version: int, adapter_ref) -> None:
        """Newer batches carry this version; an actor holding another one loads it first."""
        self.adapter = (version, [adapter_ref])

    def broadcast(self) -> None:
        """Push the current adapter to every live actor now (sync mode: before the next epoch)."""
        handles = [s.handle for i, s in self.slots.items() if not self._probing(i)]
        ray.get([h.set_adapter.remote(self.adapter[1][0]) for h in handles])

    # ---- work -------------------------------------------------------------
    @property
    def pending(self) -> int:
        return len(self.queue) + len(self.inflight)

    def submit(self, job: Job) -> None:
        self.queue.append(job)

    def pump(self) -> None:
        """Dispatch queued jobs to the least-loaded active actors, at most `max_inflight` each."""
        while self.queue:
            free = {
                i: s.load
                for i, s in self.slots.items()
                if not s.draining and not self._probing(i) and s.load < self.options.max_inflight and s.is_placed()
            }
            if not free:
                return
            actor_id = min(free, key=free.get)
            job = self.queue.popleft()
            version, adapter = self.adapter
            trajectory_ref, images_ref, info_ref = self.slots[actor_id].handle.sample.remote(
                job.prompts, job.seed, version, adapter
            )
            self.inflight[info_ref] = (job, actor_id, trajectory_ref, images_ref)
            self.slots[actor_id].load += 1

    def requeue(self, job: Job) -> None:
        """Sample `job` again, before anything queued (same key, prompts and seed: the same batch, counted once)."""
        self.requeued += 1
        self.queue.appendleft(job)

    def wait_refs(self) -> list:
        return [*self.inflight, *self.probes]

    def collect(self, ready: list) -> list[Done]:
        """Handle the ready refs among `ray.wait`'s output: finished batches, failed batches, probes."""
        done = []
        for ref in ready:
            if ref in self.probes:
                self._finish_probe(ref)
            elif ref in self.inflight:
                job, actor_id, trajectory_ref, images_ref = self.inflight.pop(ref)
                slot = self.slots[actor_id]
                slot.load -= 1
                try:
                    info = ray.get(ref)
                except ray.exceptions.RayActorError as error:
                    self.failures += 1
                    self.requeue(job)
                    if not self._probing(actor_id):
                        self.probes[slot.handle.ping.remote()] = actor_id
                        serving = sum(not s.draining and not self._probing(i) for i, s in self.slots.items())
                        print(
                            f"rlcm: rollout actor {actor_id} failed ({_reason(error)}); batch {job.key} is queued "
                            f"again, {serving} actor(s) serve until it is back or replaced",
                            file=sys.stderr,
                            flush=True,
                        )
                    continue
                slot.images += info["images"]
                slot.unet_images += info.get("unet_images", 0)
                if "gpu_memory_peak_gb" in info:
                    slot.gpu_memory_peak_gb = max(slot.gpu_memory_peak_gb or 0.0, info["gpu_memory_peak_gb"])
                slot.busy_s += info["busy_s"]
                done.append(Done(job, actor_id, trajectory_ref, images_ref, info))
        self._reap()
        return done

    def _finish_probe(self, ref) -> None:
        """A failed actor answered (it restarted: back in service) or is dead (replace it)."""
        actor_id = self.probes.pop(ref)
        try:
            ray.get(ref)
        except ray.exceptions.RayActorError:
            draining = self.slots[actor_id].draining
            for job_ref in [r for r, v in self.inflight.items() if v[1] == actor_id]:
                self.requeue(self.inflight.pop(job_ref)[0])
            self._stop_actor(actor_id)
            if not draining:
                self._start_actor()

    def kill_actor(self, index: int = 0) -> None:
        """Kill the index-th live actor from outside, without restart (for fault tests)."""
        ray.kill(self.slots[sorted(self.slots)[index]].handle, no_restart=True)

    def take_stats(self) -> dict[str, dict[str, float]]:
        """Per-actor images, busy seconds, images/s and idle ratio since the last call, for every actor in the pool now
        and every actor stopped since (scaled down, or dead and replaced) that sampled in that time; counters reset."""
        stats, now = self.retired, time.perf_counter()
        self.retired = {}
        for actor_id, slot in self.slots.items():
            stats[str(actor_id)] = slot.stats(now)
            slot.images, slot.unet_images, slot.gpu_memory_peak_gb = 0, 0, None
            slot.busy_s, slot.started = 0.0, now
        return dict(sorted(stats.items(), key=lambda item: int(item[0])))

    def shutdown(self) -> None:
        """Stop every actor. Batches still in flight are cancelled first: their results are dropped, and a task killed
        with its actor would be reported by Ray on the console as failed and retried."""
        for ref in [*self.inflight, *self.probes]:
            ray.cancel(ref)
        for actor_id in list(self.slots):
            self._stop_actor(actor_id)
