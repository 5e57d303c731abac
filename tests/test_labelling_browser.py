"""The labelling page in a real headless Chromium (Debian's `chromium` package, driven by Playwright's Python API):
a fake producer adds pairs while the page is open, a labeller judges 20 of them with the keyboard, and the 20
judgements are rows in the run folder's SQLite file.

`.ci/run` installs both; locally the test skips, saying which is missing.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest

from rlcm.labelling.server import start_in_thread
from rlcm.runs.judgements import JudgementStore
from tests.test_labelling import tiny_png

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
