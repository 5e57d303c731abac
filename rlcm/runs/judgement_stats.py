"""Pure functions over the judgement store's rows: which pairs are shown to a second labeller, how often labellers
agree on them, and how far an update waiting for people has got."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

HEX_DIGITS = 8


@dataclass(frozen=True)
class QueueStatus:
    """What the labelling page shows: the trainer's policy version, the staleness floor, the queue, the judgements
    and dropped pairs stored, and the labellers' agreement on repeated pairs."""

    policy_version: int
    min_version: int | None
    queue_length: int
    judgements: int
    dropped: int
    labeller_agreement: float = float("nan")
    repeated_pairs: int = 0


@dataclass(frozen=True)
class Agreement:
    """Share of the repeated pairs (judged, skips aside, by at least two labellers) on which all their labellers made
    the same choice (NaN when no pair is repeated), and how many pairs are repeated."""

    share: float
    pairs: int


@dataclass(frozen=True)
class WaitStatus:
    """An update waiting for people: the pairs it waits on, how many of them have a judgement, the queue (fresh pairs
    nobody has judged) and the Unix time the wait started."""

    pairs: int
    judged: int
    queue_length: int
    since: float


def repeat_threshold(fraction: float) -> str:
    """The pair ids below this string (32 lowercase hex digits, compared as text, as SQLite does) are the `fraction`
    of pairs shown again to a second labeller: their first 8 hex digits, read as a number, fall below fraction·16⁸."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"repeat_fraction must be within [0, 1], got {fraction}")
    if fraction == 1:
        return "g"  # above every hex digit
    return format(math.floor(fraction * 16**HEX_DIGITS), f"0{HEX_DIGITS}x")


def is_repeated(pair_id: str, fraction: float) -> bool:
    """Whether a judged pair is offered once more to another labeller (`repeat_threshold`)."""
    return pair_id < repeat_threshold(fraction)


def labeller_agreement(judgements: Iterable[tuple[str, str]]) -> Agreement:
    """Agreement between labellers on the pairs more than one of them judged, from (pair id, choice) rows (one per
    labeller and pair): skips are left out, and a tie agrees only with a tie (a pair agrees when its remaining choices
    are all the same)."""
    choices: dict[str, list[str]] = {}
    for pair_id, choice in judgements:
        if choice != "skip":
            choices.setdefault(pair_id, []).append(choice)
    repeated = [set(c) for c in choices.values() if len(c) > 1]
    if not repeated:
        return Agreement(float("nan"), 0)
    return Agreement(sum(len(c) == 1 for c in repeated) / len(repeated), len(repeated))
