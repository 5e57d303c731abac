"""Where D3PO's preferences come from: one small interface, one class per source (torch-free).

A source is asked about the pairs of one update and answers, per pair, which sample is preferred:

    judge(pairs) -> [Choice.FIRST | Choice.SECOND | Choice.TIE | Choice.SKIP]

`RewardPreferences` (the higher reward wins: online DPO on a scorer) and `ReplayPreferences` (a JSONL file of recorded
judgements) are the two built in; `people.StorePreferences` (people on the labelling page, through the run folder's
SQLite store) is the third: it looks the pairs up by `Pair.pair_id`, waiting for people where it must, and maps the
store's a|b|tie|skip with `parse_choice`. Pairs older than `d3po.max_staleness` never reach a source: the learner drops
and counts them before it asks. `people.build_source` builds the source a config names.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path


class Choice(str, Enum):
    """Which sample of a pair is preferred; TIE and SKIP train nothing (counted apart)."""

    FIRST = "first"
    SECOND = "second"
    TIE = "tie"
    SKIP = "skip"


ALIASES = {"a": Choice.FIRST, "b": Choice.SECOND}  # the labelling store's names of the two samples


def parse_choice(value: object) -> Choice:
    """A choice from its name (first, second, tie, skip; a and b for first and second); ValueError otherwise."""
    if isinstance(value, str):
        if value in ALIASES:
            return ALIASES[value]
        if value in Choice._value2member_map_:
            return Choice(value)
    names = ", ".join([c.value for c in Choice] + list(ALIASES))
    raise ValueError(f"choice {value!r} is not one of {names}")


@dataclass(frozen=True)
class Pair:
    """Two samples of one prompt from one policy version, as a source sees them (rewards NaN where unscored).

    `seeds`: a fingerprint of each sample's initial noise x_0; `images`: both as PNG bytes, only for a source that
    `wants_images` (and only on the learner that writes them)."""

    pair_id: str
    prompt: str
    policy_version: int
    rewards: tuple[float, float]
    seeds: tuple[int, int] = (0, 0)
    images: tuple[bytes, bytes] | None = None


def is_held_out(pair_id: str, fraction: float) -> bool:
    """Whether a pair is held out (judged, never trained on): the last 8 hex digits of its id, read as a number, fall
    below fraction·16⁸ (the labelling page picks its repeated pairs by the first 8, so the two choices are
    independent)."""
    return int(pair_id[-8:], 16) < fraction * 16**8


class PreferenceSource:
    """Judges the pairs of an update, in order; one answer per pair."""

    wants_images: bool = False  # whether `judge` needs each pair's two images (PNG)

    def judge(self, pairs: list[Pair]) -> list[Choice]:
        raise NotImplementedError

    def new_version(self, version: int) -> None:
        """The learner's policy version after an update (or a resume)."""

    def metrics(self) -> dict[str, float]:
        """The last `judge`'s metrics-row fields."""
        return {}

    def state(self) -> dict[str, int]:
        """What a checkpoint keeps so a resumed run continues where this one stopped."""
        return {}

    def load_state(self, state: dict[str, int]) -> None:
        pass


class RewardPreferences(PreferenceSource):
    """The higher reward wins; within `tie_threshold` a tie; a pair with an unscored sample (NaN) is skipped."""

    def __init__(self, tie_threshold: float = 0.0):
        self.tie_threshold = tie_threshold

    def judge(self, pairs: list[Pair]) -> list[Choice]:
        return [reward_choice(*p.rewards, self.tie_threshold) for p in pairs]


def reward_choice(first: float, second: float, tie_threshold: float = 0.0) -> Choice:
    """FIRST if first − second > tie_threshold, SECOND if second − first > tie_threshold, TIE between, SKIP on NaN."""
    if math.isnan(first) or math.isnan(second):
        return Choice.SKIP
    if abs(first - second) <= tie_threshold:
        return Choice.TIE
    return Choice.FIRST if first > second else Choice.SECOND


@dataclass(frozen=True)
class Judgement:
    """One recorded line of a judgements file."""

    pair_id: str
    prompt: str
    choice: Choice
    line: int


REQUIRED = ("pair_id", "prompt", "choice")


def read_judgements(path: str | Path) -> dict[str, Judgement]:
    """The judgements of a JSONL file by pair id; ValueError naming the file and line of a malformed one.

    One JSON object per line: `pair_id` (str), `prompt` (str), `choice` (first|second|tie|skip, or a|b); other keys
    (policy_version, labeller, time, ...) are kept for people and ignored. Blank lines are skipped; a pair id judged
    twice is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"d3po.preferences.path: no judgements file at {path}")
    out: dict[str, Judgement] = {}
    for number, text in enumerate(path.read_text().splitlines(), 1):
        if not text.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not a JSON object ({error.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where}: not a JSON object")
        missing = [key for key in REQUIRED if key not in row]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)} (each line needs {', '.join(REQUIRED)})")
        try:
            choice = parse_choice(row["choice"])
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        pair_id = str(row["pair_id"])
        if pair_id in out:
            raise ValueError(f"{where}: pair {pair_id} is judged twice (first on line {out[pair_id].line})")
        out[pair_id] = Judgement(pair_id, str(row["prompt"]), choice, number)
    return out


class ReplayPreferences(PreferenceSource):
    """Recorded judgements from a JSONL file (`read_judgements`), looked up by pair id.

    A pair the file lacks is an error (`on_missing="error"`) or skipped; a judgement whose prompt is not the pair's
    is an error: the file belongs to another run."""

    def __init__(self, path: str | Path, on_missing: str = "error"):
        self.path, self.on_missing = Path(path), on_missing
        self.judgements = read_judgements(self.path)

    def judge(self, pairs: list[Pair]) -> list[Choice]:
        return [self._choice(p) for p in pairs]

    def _choice(self, pair: Pair) -> Choice:
        found = self.judgements.get(pair.pair_id)
        if found is None:
            if self.on_missing == "skip":
                return Choice.SKIP
            raise ValueError(
                f"{self.path}: no judgement for pair {pair.pair_id} (prompt {pair.prompt!r}, policy version "
                f"{pair.policy_version}); judge it or set d3po.preferences.on_missing=skip"
            )
        if found.prompt != pair.prompt:
            raise ValueError(
                f"{self.path}:{found.line}: pair {pair.pair_id} has prompt {pair.prompt!r} in this run, not "
                f"{found.prompt!r}: the file was recorded by another run"
            )
        return found.choice
