"""The judgement store (SQLite in the run folder) and the labelling page's HTTP API: every bad input is a clear 4xx."""

from __future__ import annotations

import io
import logging
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from rlcm.commands.main import build_parser
from rlcm.labelling.app import LabelSettings, create_app
from rlcm.labelling.server import start_in_thread
from rlcm.runs.judgements import AlreadyJudged, JudgementStore, StalePair, UnknownPair

TOKEN = "label-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def tiny_png(seed: int, size: int = 8) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def add(store: JudgementStore, i: int, version: int = 0) -> str:
    return store.add_pair(f"prompt {i}", tiny_png(2 * i), tiny_png(2 * i + 1), version, (i, i))


@pytest.fixture
def store(tmp_path) -> JudgementStore:
    return JudgementStore(tmp_path, staleness=2)


@pytest.fixture
def client(store) -> TestClient:
    return TestClient(create_app(store, LabelSettings(token=TOKEN)), raise_server_exceptions=False)


# ---------------------------------------------------------------- the store


def test_store_is_sqlite_in_wal_mode_with_one_row_per_judgement(tmp_path, store):
    first = add(store, 0)
    store.record(first, "a", "ann")
    db = sqlite3.connect(tmp_path / "judgements.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    row = db.execute(
        "SELECT pair_id, prompt, seed_a, seed_b, policy_version, choice, labeller FROM judgements"
    ).fetchall()
    assert row == [(first, "prompt 0", 0, 0, 0, "a", "ann")]


def test_next_unjudged_goes_oldest_first_and_skips_what_this_labeller_judged(store):
    ids = [add(store, i) for i in range(3)]
    assert store.next_unjudged("ann").pair_id == ids[0]
    store.record(ids[0], "skip", "ann")
    assert store.next_unjudged("ann").pair_id == ids[1]
    assert store.next_unjudged("bob").pair_id == ids[0], "a skip leaves the pair to others"
    store.record(ids[1], "b", "ann")
    assert store.next_unjudged("bob").pair_id == ids[0]
    store.record(ids[0], "tie", "bob")
    assert store.next_unjudged("bob").pair_id == ids[2], "pairs nobody judged come before repeats"
    assert store.queue_length() == 1 and store.queue_length("ann") == 1 and store.queue_length("bob") == 2
    store.record(ids[2], "a", "ann")
    assert store.next_unjudged("ann") is None
    assert store.pair(ids[2]).image_a == tiny_png(4)


def test_record_refuses_forged_replayed_and_stale_pairs_storing_nothing(store):
    pair = add(store, 0, version=0)
    with pytest.raises(UnknownPair):
        store.record("0" * 32, "a", "ann")
    store.record(pair, "a", "ann")
    with pytest.raises(AlreadyJudged):
        store.record(pair, "b", "ann")
    add(store, 1, version=3)  # the staleness bound of 2 now needs version >= 1
    with pytest.raises(StalePair, match="older than the staleness bound"):
        store.record(pair, "a", "bob")
    assert [j.choice for j in store.judgements_after(0)] == ["a"]


def test_drop_stale_counts_and_hides_dropped_pairs(tmp_path):
    store = JudgementStore(tmp_path)
    old = [add(store, i, version=0) for i in range(3)]
    new = add(store, 3, version=1)
    assert store.drop_stale(1) == 3 and store.drop_stale(1) == 0
    assert store.status().dropped == 3 and store.queue_length() == 1
    assert store.next_unjudged("ann").pair_id == new
    with pytest.raises(StalePair, match="dropped"):
        store.record(old[0], "a", "ann")


def test_cursor_continues_after_reopening(tmp_path, store):
    ids = [add(store, i) for i in range(4)]
    for pair_id in ids[:2]:
        store.record(pair_id, "a", "ann")
    seen = store.judgements_after(0)
    cursor = seen[-1].id
    reopened = JudgementStore(tmp_path, staleness=2)
    assert reopened.judgements_after(0) == seen
    reopened.record(ids[2], "b", "ann")
    assert [j.pair_id for j in reopened.judgements_after(cursor)] == [ids[2]]
    assert reopened.next_unjudged("ann").pair_id == ids[3]
    with pytest.raises(AlreadyJudged):
        reopened.record(ids[0], "b", "ann")


def test_policy_version_is_the_trainer_s_or_the_newest_pair_s(store):
    assert store.policy_version() == 0
    add(store, 0, version=2)
    assert store.policy_version() == 2
    store.set_policy_version(5)
    assert store.status().policy_version == 5 and store.status().min_version == 3
    assert store.queue_length() == 0, "a version-2 pair is stale at version 5 with staleness 2"


def test_add_pair_refuses_what_is_not_png(store):
    with pytest.raises(ValueError, match="PNG"):
        store.add_pair("p", b"GIF89a", tiny_png(0), 0, (0, 0))
    with pytest.raises(ValueError, match="hex"):
        store.add_pair("p", tiny_png(0), tiny_png(1), 0, (0, 0), pair_id="../x")
    store.add_pair("p", tiny_png(0), tiny_png(1), 0, (0, 0), pair_id="c" * 32)
    with pytest.raises(ValueError, match="stored already"):
        store.add_pair("q", tiny_png(0), tiny_png(1), 0, (0, 0), pair_id="c" * 32)


def test_wait_for_judgements_sleeps_until_one_arrives_and_says_so(store, caplog):
    pair = add(store, 0)
    timer = threading.Timer(0.4, store.record, (pair, "a", "ann"))
    timer.start()
    polls = []
    original = store.judgements_after

    def counted(cursor: int = 0, limit: int | None = None):
        polls.append(time.monotonic())
        return original(cursor, limit)

    store.judgements_after = counted
    with caplog.at_level(logging.WARNING, logger="rlcm.runs.judgements"):
        started = time.monotonic()
        found = store.wait_for_judgements(0, timeout=10)
    assert [j.pair_id for j in found] == [pair] and time.monotonic() - started < 3
    assert len(polls) < 15, f"{len(polls)} polls in 0.4 s is a busy loop"
    assert "waiting for judgements" in caplog.text and "1 pairs in the queue" in caplog.text
    assert store.wait_for_judgements(found[-1].id, timeout=0.2) == []


# ---------------------------------------------------------------- the HTTP API


def test_page_and_next_pair_and_judgement(client, store):
    assert "ArrowLeft" in client.get("/").text
    pair = add(store, 0, version=1)
    body = client.get("/api/next", params={"labeller": "ann", "token": TOKEN}).json()
    assert body["pair"]["pair_id"] == pair and body["pair"]["image_a"].startswith("data:image/png;base64,")
    assert body["status"] == {
        **{"policy_version": 1, "min_version": 0, "queue_length": 1, "judgements": 0, "dropped": 0},
        **{"labeller_agreement": None, "repeated_pairs": 0},
    }
    made = client.post("/api/judgements", json={"pair_id": pair, "choice": "b", "labeller": "ann"}, headers=AUTH)
    assert made.status_code == 201, made.text
    assert made.json()["choice"] == "b"
    assert client.get("/api/next", params={"labeller": "ann"}, headers=AUTH).json()["pair"] is None
    assert client.get(f"/api/pairs/{pair}", headers=AUTH).json()["prompt"] == "prompt 0"


def test_missing_token_is_401_and_wrong_token_403(client, store):
    pair = add(store, 0)
    judgement = {"pair_id": pair, "choice": "a", "labeller": "ann"}
    missing = client.post("/api/judgements", json=judgement)
    assert missing.status_code == 401 and "no token" in missing.json()["detail"]
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = client.post("/api/judgements", json=judgement, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and "wrong token" in wrong.json()["detail"]
    assert client.get("/api/next", params={"labeller": "ann", "token": "nope"}).status_code == 403
    assert client.get("/api/status").status_code == 401
    assert store.judgements_after(0) == []


def test_forged_pair_id_is_404_and_malformed_422(client, store):
    add(store, 0)
    forged = client.post("/api/judgements", json={"pair_id": "f" * 32, "choice": "a", "labeller": "x"}, headers=AUTH)
    assert forged.status_code == 404 and "no pair has id" in forged.json()["detail"]
    bad = client.post("/api/judgements", json={"pair_id": "1 OR 1=1", "choice": "a", "labeller": "x"}, headers=AUTH)
    assert bad.status_code == 422 and "pair_id" in bad.json()["detail"]
    assert client.get("/api/pairs/" + "e" * 32, headers=AUTH).status_code == 404
    assert client.get("/api/pairs/nothex", headers=AUTH).status_code == 422
    assert store.judgements_after(0) == []


def test_replayed_judgement_is_409_and_stored_once(client, store):
    pair = add(store, 0)
    judgement = {"pair_id": pair, "choice": "a", "labeller": "ann"}
    assert client.post("/api/judgements", json=judgement, headers=AUTH).status_code == 201
    for choice in ("a", "b"):
        replay = client.post("/api/judgements", json={**judgement, "choice": choice}, headers=AUTH)
        assert replay.status_code == 409 and "already judged" in replay.json()["detail"]
    other = client.post("/api/judgements", json={**judgement, "labeller": "bob"}, headers=AUTH)
    assert other.status_code == 201
    assert [(j.labeller, j.choice) for j in store.judgements_after(0)] == [("ann", "a"), ("bob", "a")]


def test_stale_pair_is_410_with_the_bound_in_the_message(client, store):
    old = add(store, 0, version=0)
    add(store, 1, version=4)
    stale = client.post("/api/judgements", json={"pair_id": old, "choice": "a", "labeller": "ann"}, headers=AUTH)
    assert stale.status_code == 410
    assert "policy version 0" in stale.json()["detail"] and "at least 2" in stale.json()["detail"]
    store.drop_stale(5)
    dropped = client.post("/api/judgements", json={"pair_id": old, "choice": "a", "labeller": "bob"}, headers=AUTH)
    assert dropped.status_code == 410 and "dropped" in dropped.json()["detail"]
    assert store.judgements_after(0) == []


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"pair_id": "' + b"a" * 32 + b'", "choice": "left", "labeller": "ann"}',
        b'{"pair_id": "' + b"a" * 32 + b'", "choice": "a", "labeller": "<script>"}',
        b'{"pair_id": "' + b"a" * 32 + b'", "choice": "a", "labeller": ""}',
        b'{"pair_id": "' + b"a" * 32 + b'", "choice": "a", "labeller": "ann", "extra": 1}',
        b"[]",
        b"",
    ],
)
def test_malformed_judgements_are_422(client, store, body):
    response = client.post("/api/judgements", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("invalid judgement")


def test_oversized_body_is_413(client):
    response = client.post("/api/judgements", content=b"x" * 10_000, headers=AUTH)
    assert response.status_code == 413


def test_bad_labeller_in_query_is_422_with_a_readable_detail(client):
    too_long = client.get("/api/next", params={"labeller": "x" * 65}, headers=AUTH)
    assert too_long.status_code == 422 and too_long.json()["detail"].startswith("invalid request: query.labeller")
    missing = client.get("/api/next", headers=AUTH)
    assert missing.status_code == 422 and "query.labeller: Field required" in missing.json()["detail"]


def test_concurrent_replays_store_one_judgement(store):
    pair = add(store, 0)
    outcomes: list[str] = []

    def judge() -> None:
        try:
            store.record(pair, "a", "ann")
            outcomes.append("stored")
        except AlreadyJudged:
            outcomes.append("replay")

    threads = [threading.Thread(target=judge) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["replay"] * 7 + ["stored"]
    assert len(store.judgements_after(0)) == 1


def test_page_runs_in_a_thread_beside_a_trainer(tmp_path):
    server = start_in_thread(tmp_path, port=0, token=TOKEN)
    try:
        import httpx

        assert server.url.endswith(f"?token={TOKEN}")
        base = server.url.split("?")[0]
        assert httpx.get(base + "healthz").json() == {"status": "ok"}
        assert httpx.get(base + "api/status", params={"token": TOKEN}).json()["queue_length"] == 0
    finally:
        server.stop()
    assert not server.thread.is_alive()


def test_label_command_parses(tmp_path):
    args = build_parser().parse_args(["label", "--run", str(tmp_path), "--port", "8011", "--staleness", "3"])
    assert (args.run, args.port, args.staleness, args.host) == (str(tmp_path), 8011, 3, "127.0.0.1")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["label", "--run", str(tmp_path), "--staleness", "-1"])


def test_label_on_a_missing_run_folder_is_a_clear_error_without_torch(tmp_path):
    code = (
        "import sys; from rlcm.commands.main import main; "
        f"rc = main(['label', '--run', {str(tmp_path / 'none')!r}]); print('torch' in sys.modules); sys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "is not a run folder" in done.stderr
    assert done.stdout.strip() == "False", "rlcm label must not import torch"
