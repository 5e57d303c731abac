"""The labelling page in a real headless Chromium (Debian's `chromium` package, driven by Playwright's Python API):
a labeller judges 20 pairs with the keyboard, and the 20 judgements are rows in the run folder's SQLite file, first
with a fake producer adding pairs, then while `rlcm train --config d3po-human` trains on them.

`.ci/run` installs both; locally the test skips, saying which is missing.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import torch

from learner.actor import STATE_FILE
from rlcm.labelling.server import start_in_thread
from rlcm.runs.judgements import JudgementStore
from tests.test_labelling import tiny_png
from tests.toys import rows_of, train_cli

CHROMIUM = Path(os.environ.get("RLCM_CHROMIUM", "/usr/bin/chromium"))
TOKEN = "browser-s3cret"
PAIRS = 20
NEW_PAIR = """(seen) => {
  const id = document.querySelector("#judging").dataset.pairId;
  return id && !seen.includes(id) ? id : null;
}"""
KEYS = {"ArrowLeft": "a", "ArrowRight": "b", "ArrowDown": "tie", "Space": "skip"}

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed: pip install playwright (the test extra has it)"
)
if not CHROMIUM.is_file():
    pytest.skip(
        f"no Chromium at {CHROMIUM}: apt-get install -y chromium (as .ci/run does), or set RLCM_CHROMIUM",
        allow_module_level=True,
    )


def produce(store: JudgementStore, count: int, stop: threading.Event) -> None:
    """A stand-in for the trainer: one pair of tiny PNGs every 50 ms, the policy version rising every 5 pairs."""
    for i in range(count):
        if stop.wait(0.05):
            return
        store.add_pair(f"a photo of animal {i}", tiny_png(2 * i, 16), tiny_png(2 * i + 1, 16), i // 5, (i, i))


def test_twenty_pairs_judged_with_the_keyboard_land_in_sqlite(tmp_path):
    store = JudgementStore(tmp_path)
    server = start_in_thread(tmp_path, port=0, token=TOKEN)
    stop = threading.Event()
    producer = threading.Thread(target=produce, args=(store, PAIRS + 5, stop), daemon=True)
    expected: dict[str, str] = {}
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(server.url + "&labeller=tester")
            sync_api.expect(page.locator("#waiting")).to_be_visible()  # the page is open before the first pair
            producer.start()
            keys = list(KEYS)
            for i in range(PAIRS):
                pair_id = page.wait_for_function(NEW_PAIR, arg=list(expected), timeout=10_000).json_value()
                sync_api.expect(page.locator("#labeller")).to_have_text("tester")
                page.keyboard.press(keys[i % len(keys)])
                expected[pair_id] = KEYS[keys[i % len(keys)]]
            sync_api.expect(page.locator("#judged")).to_have_text(str(PAIRS))
            assert page.locator("#message").text_content() == ""
            assert int(page.locator("#policy-version").text_content()) >= 3
            browser.close()
    finally:
        stop.set()
        server.stop()
    rows = sqlite3.connect(tmp_path / "judgements.sqlite").execute(
        "SELECT j.pair_id, j.choice, j.labeller, j.prompt = p.prompt, j.policy_version = p.policy_version "
        "FROM judgements j JOIN pairs p USING (pair_id) ORDER BY j.id"
    )
    assert [tuple(row) for row in rows] == [(pair_id, choice, "tester", 1, 1) for pair_id, choice in expected.items()]
    assert len(expected) == PAIRS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def label(url: str, count: int, expected: dict[str, str], errors: list[BaseException]) -> None:
    """A labeller at the page `rlcm train` serves: open it once it is up, judge `count` pairs with the keyboard."""
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            page = browser.new_page()
            deadline = time.monotonic() + 60
            while True:
                try:
                    page.goto(url)
                    break
                except sync_api.Error:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            keys = list(KEYS)
            for i in range(count):
                pair_id = page.wait_for_function(NEW_PAIR, arg=list(expected), timeout=60_000).json_value()
                page.keyboard.press(keys[i % len(keys)])
                expected[pair_id] = KEYS[keys[i % len(keys)]]
            sync_api.expect(page.locator("#judged")).to_have_text(str(count))
            browser.close()
    except BaseException as error:  # the test's thread reports it
        errors.append(error)


def test_twenty_pairs_judged_while_d3po_human_trains_are_what_it_trains_on(ray_local, tmp_path):
    """`rlcm train --config d3po-human` serves the page; 5 epochs of 4 pairs wait for a labeller who judges all 20
    with the keyboard (one ←, →, ↓ and space per epoch); each update trains on its epoch's 4 judgements."""
    port, expected, errors = free_port(), {}, []
    url = f"http://localhost:{port}/?token={TOKEN}&labeller=tester"
    labeller = threading.Thread(target=label, args=(url, PAIRS, expected, errors), daemon=True)
    labeller.start()
    sets = [f"d3po.preferences.serve.port={port}", f"d3po.preferences.serve.token={TOKEN}", "run.epochs=5"]
    code = train_cli("d3po-human", tmp_path, "run", *sets, "scaleout.call_timeout_s=60")
    labeller.join(30)
    assert not errors, errors
    assert code == 0 and len(expected) == PAIRS
    run = tmp_path / "run"
    rows = sqlite3.connect(run / "judgements.sqlite").execute(
        "SELECT j.pair_id, j.choice, j.labeller, p.policy_version FROM judgements j JOIN pairs p USING (pair_id) "
        "ORDER BY j.id"
    )
    rows = [tuple(row) for row in rows]
    assert [(pair_id, choice, labeller) for pair_id, choice, labeller, _ in rows] == [
        (pair_id, choice, "tester") for pair_id, choice in expected.items()
    ]
    assert [version for *_, version in rows] == [v for v in range(5) for _ in range(4)]
    metrics = rows_of(run)
    assert [r["policy_version"] for r in metrics] == [1, 2, 3, 4, 5], "every epoch's update trained"
    assert all(r["judgements_consumed"] == 4 and r["preferences_used"] + r["pairs_held_out"] == 2 for r in metrics)
    assert all(r["pairs_tied"] == 1 and r["pairs_skipped"] == 1 and r["pairs_stale"] == 0 for r in metrics)
    assert sum(r["judgements_consumed"] for r in metrics) == PAIRS
    assert all(r["judgements_per_minute"] > 0 for r in metrics)
    assert all(0 <= r["preference_reward_agreement"] <= 1 for r in metrics), "vs the JPEG reward"
    state = torch.load(run / "checkpoints" / "epoch-0004" / STATE_FILE, weights_only=True)
    assert state["judgement_cursor"] == PAIRS and state["version"] == 5
