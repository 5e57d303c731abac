"""Pairwise judgements in the run folder: a SQLite store (WAL mode) of image pairs and of the choices people make.

A producer (the trainer) adds pairs of images of one prompt with `add_pair`; labellers judge them through the
labelling page (`record`); the learner reads judgements in the order they were stored (`judgements_after`, or
`wait_for_judgements` to block until some arrive). Every write is a committed, fsynced transaction, so nothing is lost
when the page, the trainer or the machine stops: reopening the store continues from what it holds, and a learner that
saved its cursor resumes after the last judgement it consumed.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from rlcm.runs.judgement_stats import Agreement, QueueStatus, WaitStatus, labeller_agreement, repeat_threshold

logger = logging.getLogger(__name__)

FILE_NAME = "judgements.sqlite"
Choice = Literal["a", "b", "tie", "skip"]
CHOICES: tuple[str, ...] = get_args(Choice)
PAIR_ID_PATTERN = r"^[0-9a-f]{32}$"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

SCHEMA = """
CREATE TABLE IF NOT EXISTS pairs (
    pair_id TEXT PRIMARY KEY,
    prompt TEXT NOT NULL,
    seed_a INTEGER NOT NULL,
    seed_b INTEGER NOT NULL,
    policy_version INTEGER NOT NULL,
    image_a BLOB NOT NULL,
    image_b BLOB NOT NULL,
    created REAL NOT NULL,
    dropped REAL
);
CREATE INDEX IF NOT EXISTS pairs_fresh ON pairs (dropped, created);
CREATE TABLE IF NOT EXISTS judgements (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pair_id TEXT NOT NULL REFERENCES pairs (pair_id),
    prompt TEXT NOT NULL,
    seed_a INTEGER NOT NULL,
    seed_b INTEGER NOT NULL,
    policy_version INTEGER NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'skip')),
    labeller TEXT NOT NULL,
    time REAL NOT NULL,
    UNIQUE (pair_id, labeller)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS awaited (pair_id TEXT PRIMARY KEY, since REAL NOT NULL);
"""


class JudgementError(ValueError):
    """A judgement the store refuses; the labelling page turns each kind into its own 4xx."""


class UnknownPair(JudgementError):
    """No pair has this id."""


class AlreadyJudged(JudgementError):
    """This labeller has judged this pair already."""


class StalePair(JudgementError):
    """The pair was dropped, or its policy version is older than the staleness bound allows."""


@dataclass(frozen=True)
class Pair:
    pair_id: str
    prompt: str
    seeds: tuple[int, int]
    policy_version: int
    image_a: bytes
    image_b: bytes
    created: float


@dataclass(frozen=True)
class Judgement:
    """One stored judgement; `id` grows with every judgement stored and is the learner's cursor."""

    id: int
    pair_id: str
    prompt: str
    seeds: tuple[int, int]
    policy_version: int
    choice: Choice
    labeller: str
    time: float


def _judgement(row: sqlite3.Row) -> Judgement:
    return Judgement(
        id=row["id"],
        pair_id=row["pair_id"],
        prompt=row["prompt"],
        seeds=(row["seed_a"], row["seed_b"]),
        policy_version=row["policy_version"],
        choice=row["choice"],
        labeller=row["labeller"],
        time=row["time"],
    )


def _pair(row: sqlite3.Row) -> Pair:
    return Pair(
        pair_id=row["pair_id"],
        prompt=row["prompt"],
        seeds=(row["seed_a"], row["seed_b"]),
        policy_version=row["policy_version"],
        image_a=bytes(row["image_a"]),
        image_b=bytes(row["image_b"]),
        created=row["created"],
    )


def _pair_fields(pair: sqlite3.Row) -> tuple:
    return pair["pair_id"], pair["prompt"], pair["seed_a"], pair["seed_b"], pair["policy_version"]


def _check_png(image: bytes, name: str) -> None:
    if not isinstance(image, bytes) or not image.startswith(PNG_SIGNATURE):
        raise ValueError(f"{name} must be the bytes of a PNG file (they start with {PNG_SIGNATURE!r})")


class JudgementStore:
    """Pairs and judgements in `<run_dir>/judgements.sqlite`; safe to use from several threads and processes at once.

    `staleness`: pairs more than this many policy versions older than the current one (`set_policy_version`, or the
    newest pair's) are neither offered nor accepted; None keeps every pair that `drop_stale` has not dropped.
    `repeat_fraction`: the share of pairs (by id, `judgement_stats.repeat_threshold`) that, once judged, are offered
    first to one more labeller, so `labeller_agreement` has repeated pairs to compare.
    """

    def __init__(self, run_dir: Path, staleness: int | None = None, repeat_fraction: float = 0.0):
        self.path = Path(run_dir) / FILE_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if staleness is not None and staleness < 0:
            raise ValueError(f"staleness must be at least 0 policy versions, got {staleness}")
        self.staleness = staleness
        self.repeat_below = repeat_threshold(repeat_fraction)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """One connection per call: no connection is shared between threads, and each call sees every commit."""
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            yield db
        finally:
            db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def add_pair(
        self,
        prompt: str,
        image_a: bytes,
        image_b: bytes,
        policy_version: int,
        seeds: tuple[int, int],
        pair_id: str | None = None,
        exist_ok: bool = False,
    ) -> str:
        """Store two PNG images of `prompt` sampled by `policy_version` from `seeds`; returns the pair id (32 hex
        digits, random unless given). A pair id stored already is an error, or with `exist_ok` (a resumed trainer
        sampling the pair again) keeps the stored pair and offers it again if it was dropped."""
        _check_png(image_a, "image_a")
        _check_png(image_b, "image_b")
        pair_id = pair_id or uuid.uuid4().hex
        if not re.fullmatch(PAIR_ID_PATTERN, pair_id):
            raise ValueError(f"pair id {pair_id!r} must be 32 lowercase hex digits")
        try:
            with self._write() as db:
                db.execute(
                    "INSERT INTO pairs (pair_id, prompt, seed_a, seed_b, policy_version, image_a, image_b, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                    + (" ON CONFLICT (pair_id) DO UPDATE SET dropped = NULL" if exist_ok else ""),
                    (pair_id, prompt, int(seeds[0]), int(seeds[1]), int(policy_version), image_a, image_b, time.time()),
                )
        except sqlite3.IntegrityError:
            raise ValueError(f"a pair with id {pair_id} is stored already") from None
        return pair_id

    def set_policy_version(self, version: int) -> None:
        """The trainer's current policy version: what the page shows and what `staleness` counts back from."""
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('policy_version', ?)", (int(version),))

    def policy_version(self) -> int:
        """The version `set_policy_version` stored last (a resumed trainer sets it back), else the newest pair's (0 for
        an empty store)."""
        with self._connect() as db:
            return self._policy_version(db)

    @staticmethod
    def _policy_version(db: sqlite3.Connection) -> int:
        row = db.execute(
            "SELECT COALESCE((SELECT value FROM meta WHERE key = 'policy_version'), "
            "(SELECT MAX(policy_version) FROM pairs), 0)"
        ).fetchone()
        return int(row[0])

    def _min_version(self, db: sqlite3.Connection) -> int | None:
        return None if self.staleness is None else max(self._policy_version(db) - self.staleness, 0)

    def _fresh(self, db: sqlite3.Connection) -> tuple[str, tuple[int, ...]]:
        """A WHERE clause (on table alias p) and its parameters selecting the pairs still offered."""
        floor = self._min_version(db)
        if floor is None:
            return "p.dropped IS NULL", ()
        return "p.dropped IS NULL AND p.policy_version >= ?", (floor,)

    def next_unjudged(self, labeller: str) -> Pair | None:
        """The next fresh pair `labeller` has not judged: a repeated pair (`repeat_fraction`) judged by exactly one
        other labeller first, then pairs nobody has judged (other than a skip), then the oldest; None when there is
        none."""
        decided = "(SELECT COUNT(*) FROM judgements j WHERE j.pair_id = p.pair_id AND j.choice != 'skip')"
        with self._connect() as db:
            where, params = self._fresh(db)
            row = db.execute(
                f"SELECT p.* FROM pairs p WHERE {where} "
                "AND NOT EXISTS (SELECT 1 FROM judgements j WHERE j.pair_id = p.pair_id AND j.labeller = ?) "
                f"ORDER BY NOT (p.pair_id < ? AND {decided} = 1), {decided} > 0, p.created, p.rowid LIMIT 1",
                (*params, labeller, self.repeat_below),
            ).fetchone()
        return _pair(row) if row else None

    def pair(self, pair_id: str) -> Pair:
        """The pair with this id (UnknownPair if none)."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM pairs WHERE pair_id = ?", (pair_id,)).fetchone()
        if row is None:
            raise UnknownPair(f"no pair has id {pair_id!r}")
        return _pair(row)

    def record(self, pair_id: str, choice: Choice, labeller: str) -> Judgement:
        """Store `labeller`'s choice for the pair (the caller has checked who the labeller is).

        Raises UnknownPair, AlreadyJudged (a replay: nothing is stored twice) or StalePair (dropped, or older than
        the staleness bound); stores nothing then.
        """
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {CHOICES}, got {choice!r}")
        if not labeller:
            raise ValueError("a judgement needs a labeller name")
        with self._write() as db:
            pair = db.execute("SELECT * FROM pairs WHERE pair_id = ?", (pair_id,)).fetchone()
            if pair is None:
                raise UnknownPair(f"no pair has id {pair_id!r}")
            self._check_fresh(db, pair)
            try:
                cursor = db.execute(
                    "INSERT INTO judgements (pair_id, prompt, seed_a, seed_b, policy_version, choice, labeller, time) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (*_pair_fields(pair), choice, labeller, time.time()),
                )
            except sqlite3.IntegrityError:
                raise AlreadyJudged(f"{labeller!r} has already judged pair {pair_id}; a judgement is final") from None
            row = db.execute("SELECT * FROM judgements WHERE id = ?", (cursor.lastrowid,)).fetchone()
        return _judgement(row)

    def _check_fresh(self, db: sqlite3.Connection, pair: sqlite3.Row) -> None:
        if pair["dropped"] is not None:
            raise StalePair(
                f"pair {pair['pair_id']} (policy version {pair['policy_version']}) was dropped as stale; "
                "judge the next pair"
            )
        floor = self._min_version(db)
        if floor is not None and pair["policy_version"] < floor:
            raise StalePair(
                f"pair {pair['pair_id']} comes from policy version {pair['policy_version']}, older than the staleness "
                f"bound allows (at least {floor}: current {self._policy_version(db)} minus {self.staleness}); "
                "judge the next pair"
            )

    def judgements_after(self, cursor: int = 0, limit: int | None = None) -> list[Judgement]:
        """Judgements stored after the one with id `cursor` (0: all), oldest first. Ids only grow, and one committed
        after another has the larger id, so a learner that keeps the last id it consumed misses none."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM judgements WHERE id > ? ORDER BY id LIMIT ?",
                (int(cursor), -1 if limit is None else limit),
            ).fetchall()
        return [_judgement(r) for r in rows]

    def queue_length(self, labeller: str | None = None) -> int:
        """Fresh pairs waiting: not judged by `labeller`, or (None) judged by nobody (skips do not count)."""
        with self._connect() as db:
            where, params = self._fresh(db)
            if labeller is None:
                judged, extra = "j.choice != 'skip'", ()
            else:
                judged, extra = "j.labeller = ?", (labeller,)
            row = db.execute(
                f"SELECT COUNT(*) FROM pairs p WHERE {where} "
                f"AND NOT EXISTS (SELECT 1 FROM judgements j WHERE j.pair_id = p.pair_id AND {judged})",
                (*params, *extra),
            ).fetchone()
        return int(row[0])

    def drop_stale(self, min_version: int) -> int:
        """Drop the pairs from policy versions below `min_version` (kept in the file, no longer offered or accepted);
        returns how many this call dropped (`status().dropped` counts them all)."""
        with self._write() as db:
            cursor = db.execute(
                "UPDATE pairs SET dropped = ? WHERE dropped IS NULL AND policy_version < ?",
                (time.time(), int(min_version)),
            )
        return cursor.rowcount

    def status(self, labeller: str | None = None) -> QueueStatus:
        """Policy version, the staleness floor, the queue (`queue_length(labeller)`), judgements and dropped pairs."""
        with self._connect() as db:
            version, floor = self._policy_version(db), self._min_version(db)
            judged = db.execute("SELECT COUNT(*) FROM judgements").fetchone()[0]
            dropped = db.execute("SELECT COUNT(*) FROM pairs WHERE dropped IS NOT NULL").fetchone()[0]
        agreement = self.labeller_agreement()
        return QueueStatus(
            version, floor, self.queue_length(labeller), int(judged), int(dropped), agreement.share, agreement.pairs
        )

    def labeller_agreement(self) -> Agreement:
        """How often labellers agree on the pairs several of them judged (`judgement_stats.labeller_agreement`)."""
        with self._connect() as db:
            rows = db.execute("SELECT pair_id, choice FROM judgements WHERE choice != 'skip'").fetchall()
        return labeller_agreement((r["pair_id"], r["choice"]) for r in rows)

    def set_awaited(self, pair_ids: list[str]) -> None:
        """The pairs an update now waits on (none: it waits no more), for `waiting` to report from another process."""
        with self._write() as db:
            db.execute("DELETE FROM awaited")
            now = time.time()
            db.executemany("INSERT OR IGNORE INTO awaited VALUES (?, ?)", [(p, now) for p in pair_ids])

    def waiting(self) -> WaitStatus | None:
        """How far the update waiting for people has got (None: no update waits)."""
        with self._connect() as db:
            row = db.execute(
                "SELECT COUNT(*), MIN(since), SUM(EXISTS (SELECT 1 FROM judgements j WHERE j.pair_id = a.pair_id)) "
                "FROM awaited a"
            ).fetchone()
        if not row[0]:
            return None
        return WaitStatus(int(row[0]), int(row[2]), self.queue_length(), float(row[1]))

    def wait_for_judgements(
        self, cursor: int = 0, timeout: float = 60.0, poll_s: float = 0.05, max_poll_s: float = 1.0
    ) -> list[Judgement]:
        """The judgements after `cursor`, waiting up to `timeout` seconds for the first to arrive ([] if none did).

        Polls the file with a sleep that doubles from `poll_s` to `max_poll_s` (no busy loop), and logs a line when it
        starts waiting and every 30 s after, so a run waiting for people says so.
        """
        found = self.judgements_after(cursor)
        if found:
            return found
        start = time.monotonic()
        deadline, delay, next_note = start + timeout, poll_s, start
        while True:
            now = time.monotonic()
            if now >= next_note:
                logger.warning(
                    "waiting for judgements (after #%d): %d pairs in the queue, %.0f s waited; label them on the "
                    "labelling page (`rlcm label`, or d3po.preferences.serve beside `rlcm train`)",
                    cursor,
                    self.queue_length(),
                    now - start,
                )
                next_note = now + 30.0
            if now >= deadline:
                return []
            time.sleep(min(delay, deadline - now))
            delay = min(delay * 2, max_poll_s)
            found = self.judgements_after(cursor)
            if found:
                return found
