"""`rlcm eval`: t-intervals vs scipy, same noise for base and tuned, metric routing, and a trained toy adapter
beating its base on held-out prompts with a paired-difference CI that excludes 0."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from rewards_service.app import create_app
from rewards_service.client import HttpRewardClient, InProcessRewardClient
from rewards_service.scorers.jpeg import JpegCompressibility
from rlcm.commands.evaluate import _run, add_eval_parser
from rlcm.config.prompts import batch_seed, epoch_prompts, load_prompts
from rlcm.evaluation.evaluate import evaluate
from rlcm.evaluation.inputs import metric_clients, parse_runs, read_prompts, trained_metric
from rlcm.evaluation.sampling import sample_images
from rlcm.evaluation.settings import EvalSettings
from rlcm.evaluation.statistics import mean_ci, off_target_change, t_table_975


@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core machine, 2 threads spin against other jobs and run ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_t_table_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in [*range(1, 31), 31, 40, 60, 120, 1000]:
        assert t_table_975(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=1.5e-3), df
    with pytest.raises(ValueError, match="df"):
        t_table_975(0)


def test_mean_ci_is_the_t_interval_and_skips_nan():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    values = rng.normal(1.0, 2.0, size=12)
    stats = mean_ci(np.append(values, np.nan))
    low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=scipy_stats.sem(values))
    assert stats["n"] == 12
    assert stats["ci_low"] == pytest.approx(low) and stats["ci_high"] == pytest.approx(high)
    assert mean_ci(np.array([3.0]))["mean"] == 3.0 and np.isnan(mean_ci(np.array([3.0]))["half_width"])


def test_unknown_metric_is_an_error_before_any_model_loads(monkeypatch, tmp_path):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the metrics were checked")

    monkeypatch.setattr("rollout.models.load_pipeline", no_model)
    settings = EvalSettings(prompts=["a cat"], metrics=["jpeg_compressibility", "sharpness"], out=tmp_path)
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['sharpness'\].*jpeg_compressibility.*--service-url"):
        evaluate(settings)
    with pytest.raises(FileNotFoundError, match="pytorch_lora_weights"):
        evaluate(settings.model_copy(update={"metrics": ["jpeg_compressibility"], "lora": tmp_path}))


def test_service_metrics_go_over_http_others_in_process():
    images = np.random.default_rng(1).integers(0, 255, size=(2, 32, 32, 3), dtype=np.uint8)
    http = TestClient(create_app({"remote_jpeg": JpegCompressibility()}))
    clients = metric_clients(["remote_jpeg", "jpeg_compressibility"], "http://service", http=http)
    assert isinstance(clients["remote_jpeg"], HttpRewardClient) and isinstance(
        clients["jpeg_compressibility"], InProcessRewardClient
    )
    remote, local = (clients[n].score(images, ["a", "b"]) for n in ("remote_jpeg", "jpeg_compressibility"))
    assert remote.rewards == pytest.approx(local.rewards), remote.details
    with pytest.raises(ValueError, match=r"offers \['remote_jpeg'\]"):
        metric_clients(["llava_bertscore_typo"], "http://service", http=http)


def test_prompts_from_file_or_preset(tmp_path):
    path = tmp_path / "held_out.txt"
    path.write_text("a red fox\n\n  an owl  \n")
    assert read_prompts(str(path)) == ["a red fox", "an owl"]
    assert read_prompts("imagenet_animals", limit=3, offset=8) == load_prompts("imagenet_animals")[8:11]
    with pytest.raises(FileNotFoundError, match="preset"):
        read_prompts("no_such_prompts")


def test_same_noise_per_prompt_and_seed_whatever_the_batch(one_thread):
    """A (prompt, seed) sample does not depend on which batch it is in: base and tuned see the same noise."""
    from rollout.models import load_pipeline

    pipe = load_pipeline("tiny", device="cpu")
    settings = EvalSettings(prompts=["x"], metrics=["smoothness"], out=".", steps=2)
    prompts = ["a hen", "an owl"]
    together = sample_images(pipe, prompts, [(0, 0), (1, 0), (1, 1)], settings)
    alone = sample_images(pipe, prompts, [(1, 1)], settings)
    assert together.dtype == np.uint8 and together.shape[-1] == 3
    np.testing.assert_array_equal(together[2], alone[0])
    assert not np.array_equal(together[1], together[2])


def test_parser_registers_eval():
    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "eval",
            "--lora",
            "ckpt",
            "--base",
            "--prompts",
            "simple_animals",
            "--metrics",
            "a,b",
            "--seeds",
            "3",
            "--out",
            "o",
        ]
    )
    assert args.func is _run and args.base and args.seeds == 3 and args.steps is None and args.metrics == "a,b"
    args = parser.parse_args(
        [
            "eval",
            "--lora",
            "a=x",
            "--lora",
            "b=y",
            "--trained",
            "a=aesthetic",
            "--prompts",
            "p",
            "--metrics",
            "m",
            "--out",
            "o",
        ]
    )
    assert args.lora == ["a=x", "b=y"] and args.trained == ["a=aesthetic"]


def test_run_names_and_off_target_mean(tmp_path):
    assert parse_runs(["runs/x/checkpoints/epoch-0003"]) == {"tuned": Path("runs/x/checkpoints/epoch-0003")}
    assert list(parse_runs(["runs/x/checkpoints/epoch-0003", "b=/c"])) == ["x", "b"]
    for bad in (["a=1", "a=2"], ["base=1"], ["=1"]):
        with pytest.raises(ValueError, match="run names must be unique"):
            parse_runs(bad)
    stats = lambda mean: {"mean": mean}  # noqa: E731
    metrics = {
        "m1": {"base": stats(2.0), "a": stats(3.0)},
        "m2": {"base": stats(-4.0), "a": stats(-5.0)},
        "m3": {"base": stats(10.0), "a": stats(10.0)},
    }
    # trained on m1: off-target = mean of (−5 − −4)/4 = −25% and 0% -> −12.5%
    assert off_target_change(metrics, "a", "m1") == pytest.approx(-12.5)
    assert off_target_change(metrics, "a", None) == pytest.approx((50 - 25 + 0) / 3)
    run = tmp_path / "run"
    (run / "checkpoints" / "epoch-0001").mkdir(parents=True)
    (run / "config.yaml").write_text("reward: {name: pickscore}\n")
    assert trained_metric(run / "checkpoints" / "epoch-0001") == "pickscore" and trained_metric(tmp_path) is None


def train_toy_adapter(directory, epochs: int = 3):
    """A genuinely trained adapter: RLCM on the toy (tiny-cpu preset settings) for a few epochs of 16 samples."""
    from learner.ppo.learner import LearnerSpec, PPOLearner
    from rlcm.config.schema import load_config
    from rollout.trajectory import Trajectory
    from rollout.worker import RolloutSpec, RolloutWorker

    cfg = load_config("tiny-cpu")
    worker = RolloutWorker(
        RolloutSpec(model="tiny", lora=cfg.model.lora, num_steps=8, guidance_scale=8.0, device="cpu")
    )
    learner = PPOLearner(
        LearnerSpec(
            model="tiny", lora=cfg.model.lora, ppo=cfg.train, stat_buffer_size=16, stat_min_count=16, device="cpu"
        )
    )
    scorer, prompts, size = (
        JpegCompressibility(),
        load_prompts(cfg.prompts.source, cfg.prompts.limit),
        cfg.sampling.batch_size,
    )
    for epoch in range(epochs):
        worker.set_adapter(learner.adapter())
        drawn = epoch_prompts(prompts, cfg.run.seed, epoch, 2 * size)
        trajectory = Trajectory.concat(
            [worker.sample(drawn[b * size : (b + 1) * size], batch_seed(cfg.run.seed, epoch, b)) for b in range(2)]
        )
        rewards = np.asarray(scorer.score(trajectory.images.permute(0, 2, 3, 1).numpy(), trajectory.prompts).rewards)
        learner.train(trajectory, learner.advantages(trajectory.prompts, rewards))
    learner.save_lora(directory)
    (directory / "rlcm_model.json").write_text(json.dumps({"model": "tiny", "model_seed": 0}))
    return directory


def _strict(constant):
    raise ValueError(f"eval.json holds {constant}")


@pytest.mark.slow
def test_trained_adapter_beats_base_on_held_out_prompts(tmp_path, one_thread):
    lora = train_toy_adapter(tmp_path / "ckpt")
    prompts = read_prompts("imagenet_animals", limit=8, offset=8)  # the toy trained on the first 8
    settings = EvalSettings(
        prompts=prompts, metrics=["jpeg_compressibility", "smoothness"], out=tmp_path / "eval", lora=lora, seeds=2
    )
    report = evaluate(settings)

    written = json.loads((tmp_path / "eval" / "eval.json").read_text(), parse_constant=_strict)
    jpeg = written["metrics"]["jpeg_compressibility"]
    difference = jpeg["tuned − base"]
    print({k: round(v["mean"], 3) for k, v in jpeg.items()}, difference["ci_low"], difference["ci_high"])
    assert jpeg["base"]["n"] == jpeg["tuned"]["n"] == difference["n"] == 16
    assert jpeg["tuned"]["mean"] > jpeg["base"]["mean"]
    assert difference["ci_low"] > 0
    pairs = np.array(
        [[s["tuned"]["jpeg_compressibility"], s["base"]["jpeg_compressibility"]] for s in written["samples"]]
    )
    assert difference["mean"] == pytest.approx(float((pairs[:, 0] - pairs[:, 1]).mean()))
    assert report["metrics"]["smoothness"]["tuned − base"]["n"] == 16

    table = (tmp_path / "eval" / "eval.md").read_text()
    assert "| model | jpeg_compressibility | smoothness |" in table and "| tuned |" in table and "run − base" in table
    grid = Image.open(tmp_path / "eval" / "grid.png")
    assert grid.width > 8 * 128 and grid.height > 2 * 128

    # several runs in one paper-shaped table: the same adapter as two runs that say they trained on different metrics
    runs = {}
    for name, reward in (("jpegrun", "jpeg_compressibility"), ("smoothrun", "smoothness")):
        folder = tmp_path / name / "checkpoints" / "epoch-0002"
        __import__("shutil").copytree(lora, folder)
        (tmp_path / name / "config.yaml").write_text(f"reward: {{name: {reward}}}\n")
        runs[name] = folder
    settings = EvalSettings(
        prompts=prompts[:4],
        metrics=["jpeg_compressibility", "smoothness"],
        out=tmp_path / "multi",
        runs=runs,
        seeds=1,
        grid_columns=4,
    )
    multi = evaluate(settings)
    assert multi["models"] == ["base", "jpegrun", "smoothrun"]
    assert multi["trained"] == {"jpegrun": "jpeg_compressibility", "smoothrun": "smoothness"}
    for metric in settings.metrics:  # the LoRA is unloaded between runs: identical weights give identical samples
        assert [s["jpegrun"][metric] for s in multi["samples"]] == [s["smoothrun"][metric] for s in multi["samples"]]
    m = multi["metrics"]

    def change(metric, run):
        return 100 * (m[metric][run]["mean"] - m[metric]["base"]["mean"]) / abs(m[metric]["base"]["mean"])

    # its trained metric left out
    assert multi["off_target"]["jpegrun"] == pytest.approx(change("smoothness", "jpegrun"))
    assert multi["off_target"]["smoothrun"] == pytest.approx(change("jpeg_compressibility", "smoothrun"))
    table = (tmp_path / "multi" / "eval.md").read_text().splitlines()
    jpeg_row = next(line for line in table if line.startswith("| jpegrun |"))
    assert (
        jpeg_row.split(" | ")[1].startswith("**")
        and jpeg_row.split(" | ")[1].endswith("†")
        and "†" not in jpeg_row.split(" | ")[2]
    )
    assert Image.open(tmp_path / "multi" / "grid.png").height > 3 * 128
