"""No silent waits: every task or actor call the driver waits on has a deadline; the first one missed ends the run
with one line naming what stalled, the config keys that bound or size it, and what the cluster has free."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


class StalledError(RuntimeError):
    """Something the driver waits on missed its deadline (unschedulable, hung, or far slower than configured)."""


@dataclass(frozen=True)
class Deadline:
    what: str  # e.g. "reward scoring of batch (3, 1) (0.25 CPU)"
    started: float
    limit_s: float
    limit_key: str  # the config key that sets limit_s
    keys: tuple[str, ...]  # config keys that size what is waited on

    def expired(self, now: float) -> bool:
        return now - self.started > self.limit_s


class Watchdog:
    """Deadlines by key (an ObjectRef, a name); `check` raises StalledError for the oldest expired one."""

    def __init__(self, free: Callable[[], str], clock: Callable[[], float] = time.monotonic):
        self.free, self.clock = free, clock
        self.deadlines: dict[object, Deadline] = {}

    def start(self, key, what: str, limit_s: float, limit_key: str, keys: tuple[str, ...] = ()) -> None:
        self.deadlines[key] = Deadline(what, self.clock(), limit_s, limit_key, keys)

    def done(self, key) -> None:
        self.deadlines.pop(key, None)

    def clear(self) -> None:
        self.deadlines.clear()

    def check(self) -> None:
        now = self.clock()
        expired = [d for d in self.deadlines.values() if d.expired(now)]
        if expired:
            raise StalledError(stalled_message(min(expired, key=lambda d: d.started), now, self.free()))


def bounded_get(refs, timeout_s: float, what: str, limit_key: str, keys: tuple[str, ...], free: Callable[[], str]):
    """`ray.get(refs)` that raises StalledError (naming `limit_key`, `keys` and the free resources) after
    `timeout_s`."""
    import ray

    started = time.monotonic()
    try:
        return ray.get(refs, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise StalledError(
            stalled_message(Deadline(what, started, timeout_s, limit_key, keys), time.monotonic(), free())
        ) from None


def stalled_message(deadline: Deadline, now: float, free: str) -> str:
    """One line: what stalled, for how long, the keys to change, the cluster's free resources."""
    keys = ", ".join(dict.fromkeys((deadline.limit_key, *deadline.keys)))
    return (
        f"{deadline.what} did not finish within {deadline.limit_s:g} s ({deadline.limit_key}; waited "
        f"{now - deadline.started:.0f} s): it was never scheduled or it hangs; free on the cluster now: {free}; change "
        f"{keys}, free the cluster or give it more nodes"
    )
