"""D3PO's preferences from people (`d3po.preferences.source: human`): the store-backed source waits for judgements,
reads each once (its cursor survives a resume), honours the staleness bound; the preset, its config and dry run."""

from __future__ import annotations

import logging
import threading

import pytest

from learner.algorithms.d3po.people import StorePreferences, build_source
from learner.algorithms.d3po.preferences import Choice, Pair
from rlcm.commands.dryrun import plan_dry_run
from rlcm.config.schema import ConfigError, load_config
from rlcm.runs.judgements import JudgementStore
from tests.test_labelling import tiny_png


def pair(i: int, version: int = 0) -> Pair:
    images = (tiny_png(2 * i), tiny_png(2 * i + 1))
    return Pair(f"{i:032x}", f"prompt {i}", version, (float("nan"),) * 2, (i, i + 1), images)


def judge_later(store: JudgementStore, choices: dict[int, str], labeller: str = "ann", delay: float = 0.3):
    def run() -> None:
        threading.Event().wait(delay)
        for i, choice in choices.items():
            store.record(f"{i:032x}", choice, labeller)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_judge_writes_the_pairs_waits_for_people_and_reads_each_pair_s_first_judgement(tmp_path, caplog):
    store = JudgementStore(tmp_path)
    source = StorePreferences(store, wait_s=0.1)
    pairs = [pair(i) for i in range(4)]
    labeller = judge_later(store, {2: "tie", 0: "a", 3: "skip", 1: "b"})
    with caplog.at_level(logging.WARNING, logger="rlcm.runs.judgements"):
        choices = source.judge(pairs)
    labeller.join()
    assert choices == [Choice.FIRST, Choice.SECOND, Choice.TIE, Choice.SKIP]
    assert "waiting for judgements" in caplog.text, "a run waiting for people says so"
    stored = store.pair(pairs[1].pair_id)
    assert (stored.prompt, stored.seeds, stored.policy_version, stored.image_a) == ("prompt 1", (1, 2), 0, tiny_png(2))
    metrics = source.metrics()
    assert metrics["judgements_consumed"] == 4 and metrics["judgement_wait_s"] > 0.2
    assert metrics["judgements_per_minute"] > 0 and source.state() == {"judgement_cursor": 4}
    store.record(pairs[0].pair_id, "b", "bob")  # a second labeller: the first judgement stays the pair's
    assert StorePreferences(store).judge(pairs[:1]) == [Choice.FIRST]


def test_a_resumed_source_reads_on_from_its_cursor_nothing_twice_nothing_lost(tmp_path):
    store = JudgementStore(tmp_path)
    first = StorePreferences(store)
    judge_later(store, {0: "a"})
    assert first.judge([pair(0)]) == [Choice.FIRST]
    checkpoint = first.state()
    judge_later(store, {1: "b"})
    assert first.judge([pair(1, version=1)]) == [Choice.SECOND]  # then the run stops before its next checkpoint
    resumed = StorePreferences(JudgementStore(tmp_path), wait_s=0.1)
    resumed.load_state(checkpoint)
    resumed.new_version(1)
    assert resumed.judge([pair(1, version=1)]) == [Choice.SECOND], "the judgement after the checkpoint is found"
    assert resumed.state() == {"judgement_cursor": 2}
    assert store.status().judgements == 2, "nobody judged anything twice"


def test_a_new_policy_version_drops_pairs_past_the_staleness_bound(tmp_path):
    store = JudgementStore(tmp_path, staleness=1)
    source = StorePreferences(store, max_staleness=1)
    store.add_pair("old", tiny_png(0), tiny_png(1), 0, (0, 0), pair_id="0" * 32)
    source.new_version(2)
    assert source.metrics()["judgement_pairs_dropped"] == 1 and store.queue_length() == 0
    source.new_version(0)  # a run resumed at version 0 sets the store back and offers the pair again
    store.add_pair("old", tiny_png(0), tiny_png(1), 0, (0, 0), pair_id="0" * 32, exist_ok=True)
    assert store.policy_version() == 0 and store.next_unjudged("ann").pair_id == "0" * 32


def test_only_the_writer_adds_pairs(tmp_path):
    store = JudgementStore(tmp_path)
    reader = StorePreferences(store, writer=False)
    judge_later(store, {0: "a"}, delay=0.3)
    store.add_pair(*("prompt 0", tiny_png(0), tiny_png(1), 0, (0, 1)), pair_id=pair(0).pair_id)
    reader.new_version(3)
    assert reader.judge([pair(0)]) == [Choice.FIRST] and store.policy_version() == 0


def test_source_human_settings_preset_and_dry_run():
    config = load_config("d3po-human")
    people = config.algo.labelling(config)
    assert people.staleness == config.d3po.max_staleness == 2 and people.serve.port == 8010
    assert load_config("d3po-tiny-cpu").algo.labelling(load_config("d3po-tiny-cpu")) is None
    with pytest.raises(ConfigError, match="serve: only preferences.source=human"):
        load_config("d3po-tiny-cpu", ["d3po.preferences.serve.port=9000"])
    with pytest.raises(ValueError, match="judgement store"):
        build_source(config.d3po.preferences)
    dry = plan_dry_run(config, 32)
    assert dry.config.d3po.preferences.source == "reward", "a dry run waits for no one"
    assert any("waits for no one" in change for change in dry.changes)
