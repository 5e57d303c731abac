"""Issue 26's labelling metrics: agreement between labellers on repeated pairs (offered once more to another
labeller), and the driver's line while an update waits for people."""

from __future__ import annotations

import threading
import time
import uuid

from fastapi.testclient import TestClient

from learner.algorithms.d3po.people import StorePreferences
from learner.algorithms.d3po.preferences import Choice
from rlcm.commands.main import build_parser
from rlcm.labelling.app import LabelSettings, create_app
from rlcm.labelling.waiting import WaitNotice, wait_line
from rlcm.runs.judgement_stats import WaitStatus, is_repeated, labeller_agreement, repeat_threshold
from rlcm.runs.judgements import JudgementStore
from tests.test_human_preferences import pair
from tests.test_labelling import tiny_png

REPEATED, PLAIN, OTHER = "0" * 32, "f" * 32, "e" * 32  # below and above every repeat threshold < 1


def add(store: JudgementStore, pair_id: str) -> str:
    return store.add_pair("a prompt", tiny_png(0), tiny_png(1), 0, (0, 1), pair_id=pair_id)


def test_labeller_agreement_against_a_hand_computed_example():
    rows = [
        ("p1", "a"), ("p1", "a"),  # agree
        ("p2", "a"), ("p2", "b"),  # disagree
        ("p3", "tie"), ("p3", "tie"),  # a tie agrees with a tie
        ("p4", "tie"), ("p4", "a"),  # ... and only with a tie
        ("p5", "a"), ("p5", "skip"),  # one decided judgement: not repeated
        ("p6", "b"), ("p6", "b"), ("p6", "skip"),  # the skip is left out: agree
        ("p7", "b"),
    ]  # fmt: skip
    agreement = labeller_agreement(rows)
    assert (agreement.share, agreement.pairs) == (3 / 5, 5)
    empty = labeller_agreement([("p1", "a"), ("p1", "skip")])
    assert empty.pairs == 0 and empty.share != empty.share


def test_repeat_threshold_picks_the_fraction_by_pair_id():
    assert repeat_threshold(0.1) == "19999999" and repeat_threshold(0.0) == "00000000"
    assert is_repeated("1" * 32, 0.1) and not is_repeated("2" * 32, 0.1)
    assert is_repeated(PLAIN, 1.0) and not is_repeated(REPEATED, 0.0)
    ids = [uuid.uuid4().hex for _ in range(4000)]
    assert abs(sum(is_repeated(i, 0.1) for i in ids) / len(ids) - 0.1) < 0.03


def test_a_judged_repeated_pair_goes_first_to_one_other_labeller_never_the_same(tmp_path):
    store = JudgementStore(tmp_path, repeat_fraction=0.5)
    for pair_id in (REPEATED, PLAIN, OTHER):
        add(store, pair_id)
    assert store.next_unjudged("ann").pair_id == REPEATED  # the oldest
    store.record(REPEATED, "a", "ann")
    assert store.next_unjudged("ann").pair_id == PLAIN, "never to the same labeller"
    assert store.next_unjudged("bob").pair_id == REPEATED, "before the pairs nobody judged"
    store.record(PLAIN, "b", "ann")
    store.record(REPEATED, "b", "bob")
    assert store.next_unjudged("bob").pair_id == OTHER, "a pair outside the fraction is not repeated first"
    assert store.next_unjudged("cat").pair_id == OTHER, "a repeated pair is offered first only once more"
    status = store.status()
    assert (status.repeated_pairs, status.labeller_agreement) == (1, 0.0)
    plain = JudgementStore(tmp_path / "plain")
    for pair_id in (REPEATED, PLAIN):
        add(plain, pair_id)
    plain.record(REPEATED, "a", "ann")
    assert plain.next_unjudged("bob").pair_id == PLAIN, "repeat_fraction 0: unjudged pairs first, as before"


def test_status_endpoint_and_label_command_show_agreement(tmp_path):
    store = JudgementStore(tmp_path)
    client = TestClient(create_app(store, LabelSettings(token=None)))
    assert client.get("/api/status").json()["labeller_agreement"] is None
    add(store, REPEATED)
    for labeller in ("ann", "bob"):
        store.record(REPEATED, "tie", labeller)
    body = client.get("/api/status").json()
    assert (body["labeller_agreement"], body["repeated_pairs"]) == (1.0, 1)
    args = build_parser().parse_args(["label", "--run", str(tmp_path), "--repeat-fraction", "0.25"])
    assert args.repeat_fraction == 0.25
    assert build_parser().parse_args(["label", "--run", str(tmp_path)]).repeat_fraction == 0.1


def test_the_source_marks_the_pairs_it_waits_on_and_reports_agreement(tmp_path):
    store = JudgementStore(tmp_path)
    seen: list[WaitStatus | None] = []

    def labeller() -> None:
        deadline = time.monotonic() + 10
        while store.waiting() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        store.record(pair(0).pair_id, "a", "ann")
        seen.append(store.waiting())
        store.record(pair(1).pair_id, "b", "ann")

    thread = threading.Thread(target=labeller, daemon=True)
    thread.start()
    source = StorePreferences(store, wait_s=0.1)
    assert source.judge([pair(0), pair(1)]) == [Choice.FIRST, Choice.SECOND]
    thread.join()
    assert (seen[0].pairs, seen[0].judged, seen[0].queue_length) == (2, 1, 1)
    assert store.waiting() is None, "the wait is over"
    store.record(pair(0).pair_id, "a", "bob")
    source.judge([])
    assert source.metrics()["labeller_agreement"] == 1.0 and source.metrics()["labeller_repeated_pairs"] == 1


class FakeStore:
    def __init__(self, statuses: list[WaitStatus | None]):
        self.statuses = statuses

    def waiting(self) -> WaitStatus | None:
        return self.statuses.pop(0) if self.statuses else None


def test_the_driver_prints_a_line_per_interval_while_an_update_waits():
    status = WaitStatus(pairs=4, judged=3, queue_length=5, since=100.0)
    assert wait_line(status, 190.0, "open http://x/") == (
        "rlcm: waiting for judgements: 3 of 4 pairs judged, queue 5, 90 s so far; open http://x/"
    )
    lines: list[str] = []
    store = FakeStore([None, status, status])
    notice = WaitNotice(store, "open http://x/", interval_s=0.02, say=lines.append, clock=lambda: 130.0).start()
    deadline = time.monotonic() + 5
    while len(lines) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    notice.stop()
    assert lines == [wait_line(status, 130.0, "open http://x/")] * 2 and not notice.thread.is_alive()
