"""Preferences from people: the pairs go into the run folder's judgement store (the SQLite file the labelling page
writes), and `judge` waits until every pair has a judgement (torch-free).

The store is handed in (`rlcm.runs.judgements.JudgementStore`, or anything with its methods below), so the learner
stays below the run folder in the import layers. `build_source` builds any of the three sources from
`d3po.preferences`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from learner.algorithms.d3po.preferences import (
    Choice,
    Pair,
    PreferenceSource,
    ReplayPreferences,
    RewardPreferences,
    parse_choice,
)


class Judged(Protocol):
    id: int
    pair_id: str
    choice: str


class Agreement(Protocol):
    share: float
    pairs: int


class Store(Protocol):
    def add_pair(self, prompt, image_a, image_b, policy_version, seeds, pair_id=None, exist_ok=False) -> str: ...
    def set_policy_version(self, version: int) -> None: ...
    def drop_stale(self, min_version: int) -> int: ...
    def wait_for_judgements(self, cursor: int = 0, timeout: float = 60.0) -> list[Judged]: ...
    def set_awaited(self, pair_ids: list[str]) -> None: ...
    def labeller_agreement(self) -> Agreement: ...


class StorePreferences(PreferenceSource):
    """Each pair's first judgement in the store, read in the order judgements were stored after `cursor`.

    `cursor` (the id of the last judgement consumed) is what a checkpoint keeps: a resumed run reads on from there, so
    no judgement trains twice, and the judgements of pairs it samples again (same seed, same ids) are found, not lost.
    With `max_staleness`, every new policy version drops the store's pairs older than the bound (the page stops
    offering them; counted in `judgement_pairs_dropped`). Only the `writer` (rank 0) writes to the store.
    """

    wants_images = True

    def __init__(
        self,
        store: Store,
        max_staleness: int | None = None,
        writer: bool = True,
        wait_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ):
        self.store, self.max_staleness, self.writer = store, max_staleness, writer
        self.wait_s, self.clock = wait_s, clock
        self.cursor = 0
        self.since = clock()  # end of the previous `judge`: the window of `judgements_per_minute`
        self.dropped = 0
        self.last: dict[str, float] = {}

    def judge(self, pairs: list[Pair]) -> list[Choice]:
        """Add the pairs (a pair stored already is kept, and offered again if it was dropped), then wait, logging from
        the store every 30 s and sleeping between looks, until each has a judgement. The writer marks the pairs it
        waits on in the store, so the driver can say how far the wait has got (`JudgementStore.waiting`)."""
        if self.writer:
            for p in pairs:
                if p.images is not None:
                    self.store.add_pair(
                        p.prompt, *p.images, p.policy_version, p.seeds, pair_id=p.pair_id, exist_ok=True
                    )
        start, waiting = self.clock(), {p.pair_id for p in pairs}
        found: dict[str, Choice] = {}
        read = 0
        if self.writer:
            self.store.set_awaited(sorted(waiting))
        try:
            while waiting:
                for judged in self.store.wait_for_judgements(self.cursor, timeout=self.wait_s):
                    self.cursor, read = judged.id, read + 1
                    if judged.pair_id in waiting:
                        found[judged.pair_id] = parse_choice(judged.choice)
                        waiting.discard(judged.pair_id)
                        if not waiting:
                            break
        finally:
            if self.writer:
                self.store.set_awaited([])
        now = self.clock()
        agreement = self.store.labeller_agreement()
        self.last = {
            "judgements_consumed": float(len(found)),
            "judgement_wait_s": now - start,
            "judgements_per_minute": 60.0 * read / max(now - self.since, 1e-9),
            "judgement_cursor": float(self.cursor),
            "labeller_agreement": agreement.share,
            "labeller_repeated_pairs": float(agreement.pairs),
        }
        self.since = now
        return [found[p.pair_id] for p in pairs]

    def new_version(self, version: int) -> None:
        """Tell the page the learner's version, and drop the pairs the staleness bound now excludes."""
        if not self.writer:
            return
        self.store.set_policy_version(version)
        if self.max_staleness is not None:
            self.dropped = self.store.drop_stale(version - self.max_staleness)

    def metrics(self) -> dict[str, float]:
        return {**self.last, "judgement_pairs_dropped": float(self.dropped)}

    def state(self) -> dict[str, int]:
        return {"judgement_cursor": self.cursor}

    def load_state(self, state: dict[str, int]) -> None:
        self.cursor = int(state.get("judgement_cursor", 0))


def build_source(settings, open_store=None, max_staleness: int | None = None, writer: bool = True) -> PreferenceSource:
    """The source `d3po.preferences` names; source human reads the judgement store `open_store()` opens (the run
    folder's), and only the `writer` (rank 0) adds the pairs to it."""
    if settings.source == "file":
        return ReplayPreferences(settings.path, settings.on_missing)
    if settings.source == "human":
        if open_store is None:
            raise ValueError("d3po.preferences.source=human reads the run folder's judgement store: use `rlcm train`")
        return StorePreferences(open_store(), max_staleness, writer)
    return RewardPreferences(settings.tie_threshold)
