"""The driver's word while an update waits for people: one line every 30 s, read from the run's judgement store (the
learner marks the pairs it waits on), so a plain `rlcm train` says what it waits for."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from rlcm.runs.judgement_stats import WaitStatus

INTERVAL_S = 30.0


class Waiting(Protocol):
    def waiting(self) -> WaitStatus | None: ...


def wait_line(status: WaitStatus, now: float, where: str) -> str:
    """`rlcm: waiting for judgements: 3 of 4 pairs judged, queue 5, 90 s so far; <where>`."""
    return (
        f"rlcm: waiting for judgements: {status.judged} of {status.pairs} pairs judged, queue {status.queue_length}, "
        f"{max(now - status.since, 0):.0f} s so far; {where}"
    )


class WaitNotice:
    """A daemon thread that, every `interval_s` (sleeping between looks), prints `wait_line` while the store says an
    update waits; `stop()` ends it."""

    def __init__(
        self,
        store: Waiting,
        where: str,
        interval_s: float = INTERVAL_S,
        say: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.store, self.where, self.interval_s, self.clock = store, where, interval_s, clock
        self.say = say or (lambda line: print(line, flush=True))
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="rlcm-judgement-wait", daemon=True)

    def start(self) -> WaitNotice:
        self.thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.stopped.set()
        self.thread.join(timeout)

    def check(self) -> str | None:
        """One look at the store: the line to print, or None when no update waits."""
        status = self.store.waiting()
        return None if status is None else wait_line(status, self.clock(), self.where)

    def _run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                line = self.check()
            except Exception as error:  # a busy or vanished file must not end the run: say so and look again
                line = f"rlcm: could not read the judgement store ({type(error).__name__}: {error})"
            if line:
                self.say(line)
