"""D3PO: the per-step loss and one update against an fp64 recomputation (LCM and DDIM toys), ties and skips, the
preference sources and their errors, config errors, the plan's reference call, and `rlcm train` (LoRA in stock
diffusers, resume bitwise)."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import torch
from diffusers import LatentConsistencyModelPipeline

from learner.algorithms.d3po import D3POSettings
from learner.algorithms.d3po.learner import D3POLearnerSpec, make_pairs
from learner.algorithms.d3po.loss import d3po_loss
from learner.algorithms.d3po.preferences import (
    Choice,
    Pair,
    ReplayPreferences,
    RewardPreferences,
    parse_choice,
    read_judgements,
)
from rlcm.config.schema import ConfigError, load_config
from rollout.models import build_tiny_pipeline, load_pipeline
from rollout.policies import sample_trajectory
from rollout.policies.chain_math import gaussian_log_prob
from tests.test_learner_updates import (
    ADAM,
    F64,
    GUIDANCE,
    LORA,
    LORA_B_STD,
    SIZE,
    assert_same_update,
    gaussian_of,
    randomize_lora,
    reference_pipes,
    step_adamw,
)
from tests.toys import assert_same_lora, lora_changes_stock_images, rows_of, train_cli

PROMPTS = ["a cat", "a cat", "a dog", "a dog", "a fox", "a fox", "an owl", "an owl"]  # 4 pairs
# pair 0: first wins, pair 1: second wins, pair 2: a tie, pair 3: unscored (skip)
REWARDS = np.array([1.0, 0.2, -0.5, 0.7, 0.3, 0.3, 0.9, np.nan])
VALID = ~np.isnan(REWARDS)
SIGNS = {0: 1, 1: -1}  # the pairs that train
SETTINGS = dict(
    train_batch_size=2, grad_accum_steps=2, inner_epochs=2, beta=2.0, clip_eps=0.05, max_grad_norm=1e-3, **ADAM
)


def pair_trajectory(model: str, num_steps: int):
    """The LoRA-free base's chains, both samples of a pair from one x_0."""
    base = load_pipeline(model, device="cpu", dtype=F64)
    options = {"eta": 1.0} if model == "tiny-ddim" else {}
    return sample_trajectory(
        base,
        PROMPTS,
        num_steps,
        GUIDANCE[model],
        torch.Generator().manual_seed(5),
        height=SIZE,
        width=SIZE,
        noise_group_size=2,
        **options,
    )


def d3po_learner(model: str, **overrides):
    spec = D3POLearnerSpec(
        model=model, lora=LORA, d3po=D3POSettings(**{**SETTINGS, **overrides}), seed=3, dtype=F64, device="cpu"
    )
    learner = spec.build()
    return learner, randomize_lora(learner, LORA_B_STD[model])


def reference_d3po(model, traj, s, generator_state, theta0):
    """θ after the update written out: the trained pairs in order, shuffled as D3PO does, L_k by formula with
    π_θ/π_ref = exp(log π_θ − log π_ref) clipped to [1 − ε, 1 + ε] (the paper's code), π_ref from a pipeline that never
    had a LoRA; returns (θ, pre-clip norms, clipped share)."""
    pipe, params, base = reference_pipes(model, theta0)
    generator = torch.Generator().manual_seed(0)
    generator.set_state(generator_state)
    pairs = sorted(SIGNS)  # the learner keeps the decided pairs, in order
    steps = traj.log_probs.shape[1]
    pieces = []
    for _ in range(s.inner_epochs):
        order = torch.randperm(len(pairs), generator=generator)
        step_order = torch.stack([torch.randperm(steps, generator=generator) for _ in pairs])
        for start in range(0, len(pairs), s.train_batch_size // 2):
            chosen = order[start : start + s.train_batch_size // 2].tolist()
            pieces += [[(pairs[c], int(step_order[c, j])) for c in chosen] for j in range(steps)]
    window = s.grad_accum_steps * steps
    state, norms, clipped = {}, [], []

    def log_ratio(row: int, k: int) -> torch.Tensor:
        rows, ks = torch.tensor([row]), torch.tensor([k])
        action = traj.latents[rows, k + 1]
        log_pi = gaussian_log_prob(action, *gaussian_of(pipe, traj, rows, ks))
        with torch.no_grad():
            log_ref = gaussian_log_prob(action, *gaussian_of(base, traj, rows, ks))
        ratio = torch.exp(log_pi - log_ref)
        clipped.append(bool(((ratio - 1).abs() > s.clip_eps).item()))
        return torch.log(ratio.clamp(1 - s.clip_eps, 1 + s.clip_eps))

    def piece_loss(piece) -> torch.Tensor:
        terms = []
        for p, k in piece:
            first, second = log_ratio(2 * p, k), log_ratio(2 * p + 1, k)
            win, lose = (first, second) if SIGNS[p] > 0 else (second, first)
            terms.append(-torch.log(torch.sigmoid(s.beta * (win - lose))))
        return torch.cat(terms).mean()

    for start in range(0, len(pieces), window):
        loss = sum(piece_loss(piece) for piece in pieces[start : start + window]) / window
        norms.append(step_adamw(params, loss, state, s))
    return [p.detach().clone() for p in params], norms, np.mean(clipped)


@pytest.mark.parametrize("model, num_steps", [("tiny", 3), ("tiny-ddim", 2)])
def test_update_equals_written_out_d3po_in_fp64(model, num_steps):
    traj = pair_trajectory(model, num_steps)
    learner, theta0 = d3po_learner(model)
    generator_state = learner.generator.get_state()
    metrics = learner.train_epoch(REWARDS, VALID, traj)
    reference, norms, clipfrac = reference_d3po(model, traj, learner.settings, generator_state, theta0)
    assert min(norms) > 10 * learner.settings.max_grad_norm  # the grad-norm clip is active at every step
    assert 0 < clipfrac < 1  # some ratios clipped, some not
    assert_same_update(learner, theta0, reference)
    assert metrics["optimizer_steps"] == len(norms) == 2
    assert (metrics["pairs"], metrics["preferences_used"], metrics["pairs_tied"], metrics["pairs_skipped"]) == (
        4,
        2,
        1,
        1,
    )
    assert metrics["samples_trained"] == 4 and metrics["preference_reward_agreement"] == 1.0
    assert learner.version == 1


def test_loss_and_gradient_equal_the_formula_and_weight_zero_trains_nothing():
    g = torch.Generator().manual_seed(0)
    log_pi_w, log_ref_w, log_pi_l, log_ref_l = (torch.randn(6, generator=g, dtype=F64) * 0.1 for _ in range(4))
    for t in (log_pi_w, log_pi_l):
        t.requires_grad_(True)
    weight = torch.tensor([1, 1, 1, 1, 0, 0], dtype=F64)
    loss, info = d3po_loss(log_pi_w, log_ref_w, log_pi_l, log_ref_l, weight, beta=3.0, eps=0.08)
    ratio = lambda a, b: torch.log(torch.exp(a - b).clamp(0.92, 1.08))  # noqa: E731
    expected = -(weight * torch.log(torch.sigmoid(3.0 * (ratio(log_pi_w, log_ref_w) - ratio(log_pi_l, log_ref_l)))))
    expected = expected.mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    got = torch.autograd.grad(loss, (log_pi_w, log_pi_l), retain_graph=True)
    want = torch.autograd.grad(expected, (log_pi_w, log_pi_l))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
        assert torch.all(a[4:] == 0)  # weight 0: no gradient at all
    margin = 3.0 * ((log_pi_w - log_ref_w) - (log_pi_l - log_ref_l)).detach()[:4]
    assert math.isclose(float(info["implicit_margin"]), float(margin.mean()), rel_tol=1e-12)
    assert math.isclose(float(info["preference_accuracy"]), float((margin > 0).double().mean()))


def test_ties_skips_and_stale_pairs_train_nothing_and_are_counted():
    traj = pair_trajectory("tiny", 2)
    learner, theta0 = d3po_learner("tiny")
    metrics = learner.train_epoch(np.array([1.0, 1.0, 0.5, 0.5, 0, 0, 2.0, np.nan]), VALID, traj)
    assert metrics["skipped_update"] and learner.version == 0
    assert (metrics["pairs_tied"], metrics["pairs_skipped"], metrics["preferences_used"]) == (3, 1, 0)
    assert all(torch.equal(p, t) for p, t in zip(learner.params, theta0))

    stale, _ = d3po_learner("tiny", max_staleness=1)
    stale.version = 2  # the batch (version 0) is two versions old
    metrics = stale.train_epoch(REWARDS, VALID, traj)
    assert metrics["skipped_update"] and metrics["pairs_stale"] == 4 and metrics["preferences_used"] == 0


def test_reward_source_ties_within_the_threshold_and_skips_unscored():
    pairs = [Pair(str(i), "a cat", 0, r) for i, r in enumerate([(1, 0), (0, 1), (0.5, 0.55), (math.nan, 1)])]
    assert RewardPreferences(0.1).judge(pairs) == [Choice.FIRST, Choice.SECOND, Choice.TIE, Choice.SKIP]
    assert parse_choice("a") is Choice.FIRST and parse_choice("b") is Choice.SECOND


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"pair_id": "p1", "prompt": "a cat", "choice": "left"}'], r"judgements.jsonl:1: choice 'left' is not one"),
        (['{"pair_id": "p1", "prompt": "a cat", "choice": "a"}', "{oops"], r"judgements.jsonl:2: not a JSON object"),
        (["", '{"pair_id": "p1", "choice": "tie"}'], r"judgements.jsonl:2: missing prompt"),
        (
            ['{"pair_id": "p1", "prompt": "a", "choice": "a"}', '{"pair_id": "p1", "prompt": "a", "choice": "b"}'],
            r"judgements.jsonl:2: pair p1 is judged twice \(first on line 1\)",
        ),
    ],
)
def test_replay_file_errors_name_the_line(tmp_path, lines, message):
    path = tmp_path / "judgements.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message):
        read_judgements(path)


def test_replay_missing_pair_and_foreign_prompt_are_clear(tmp_path):
    path = tmp_path / "judgements.jsonl"
    path.write_text(json.dumps({"pair_id": "p1", "prompt": "a cat", "choice": "second", "labeller": "ann"}) + "\n")
    source = ReplayPreferences(path)
    assert source.judge([Pair("p1", "a cat", 0, (math.nan, math.nan))]) == [Choice.SECOND]
    with pytest.raises(ValueError, match=r"no judgement for pair p2 \(prompt 'a dog', policy version 3\)"):
        source.judge([Pair("p2", "a dog", 3, (0.0, 1.0))])
    assert ReplayPreferences(path, "skip").judge([Pair("p2", "a dog", 3, (0.0, 1.0))]) == [Choice.SKIP]
    with pytest.raises(ValueError, match=r"judgements.jsonl:1: pair p1 has prompt 'a dog' in this run"):
        source.judge([Pair("p1", "a dog", 0, (0.0, 1.0))])


def test_replaying_the_reward_sources_judgements_gives_the_same_update(tmp_path):
    """A file holding the reward source's choices for the run's pair ids trains bit for bit as the reward source."""
    traj = pair_trajectory("tiny", 2)
    online, _ = d3po_learner("tiny")
    pairs = make_pairs(traj, np.zeros(len(PROMPTS), dtype=int), REWARDS, VALID)
    path = tmp_path / "judgements.jsonl"
    choices = RewardPreferences().judge(pairs)
    path.write_text(
        "".join(
            json.dumps({"pair_id": p.pair_id, "prompt": p.prompt, "choice": c.value}) + "\n"
            for p, c in zip(pairs, choices)
        )
    )
    replay, _ = d3po_learner("tiny", preferences={"source": "file", "path": str(path)})
    online.train_epoch(REWARDS, VALID, traj)
    replay.train_epoch(np.full(len(PROMPTS), np.nan), np.zeros(len(PROMPTS), dtype=bool), traj)  # no rewards needed
    assert all(torch.equal(a, b) for a, b in zip(online.params, replay.params))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["d3po.train_batch_size=3"], "train_batch_size: 3 samples is not a whole number of pairs"),
        (["sampling.batch_size=15"], "sampling.batch_size: 15 is odd"),
        (["d3po.preferences.source=file"], "d3po.preferences: path: preferences.source=file needs preferences.path"),
        (["d3po.beta=0"], "d3po.beta: Input should be greater than 0"),
        (["d3po.clip_eps=1.5"], "d3po.clip_eps: Input should be less than 1"),
        (["d3po.preferences.source=file", "d3po.preferences.path=/no/such.jsonl"], "no judgements file at"),
        (["train.learning_rate=1e-3"], "train.learning_rate: an option of algorithm rlcm, but algorithm is d3po"),
        (["grpo.group_size=2"], "grpo.group_size: an option of algorithm grpo, but algorithm is d3po"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("d3po-tiny-cpu", overrides)


def test_both_policies_and_pairs_share_their_initial_noise():
    config = load_config("d3po-tiny-cpu", ["d3po.same_noise=true"])
    assert config.algo.group_size(config) == 2 and config.algo.noise_group_size(config) == 2
    ddim = load_config("d3po-tiny-cpu", ["model.name=tiny-ddim", "d3po.same_noise=false"])
    assert ddim.algo.sampler_for(ddim) == "ddim" and ddim.algo.eta(ddim) == 1.0
    assert ddim.algo.noise_group_size(ddim) == 1 and config.algo.eta(config) is None


cli = functools.partial(train_cli, "d3po-tiny-cpu")


@pytest.mark.slow
def test_d3po_trains_through_rlcm_train_resumes_bitwise_and_the_lora_loads(ray_local, tmp_path):
    """2 epochs through `rlcm train` in one go and split by --resume: equal adapters; the LoRA loads in a stock
    LatentConsistencyModelPipeline and changes its images."""
    sets = ["run.epochs=2", "sampling.num_steps=3", "sampling.batches_per_epoch=2"]
    assert cli(tmp_path, "full", *sets) == 0
    assert cli(tmp_path, "split", *sets[1:], "run.epochs=1", "run.save_every=1") == 0
    assert cli(tmp_path, "split", *sets, resume=True) == 0
    full, split = rows_of(tmp_path / "full"), rows_of(tmp_path / "split")
    assert [r["epoch"] for r in split] == [0, 1] and all(r["algorithm"] == "d3po" for r in full)
    assert all(r["preferences_used"] > 0 and r["pairs"] == 16 for r in full)
    assert split[-1]["samples_seen"] == full[-1]["samples_seen"]
    assert_same_lora(tmp_path / "full", tmp_path / "split")

    pipe = build_tiny_pipeline()
    assert isinstance(pipe, LatentConsistencyModelPipeline)
    assert lora_changes_stock_images(pipe, tmp_path / "full/checkpoints/epoch-0001", num_inference_steps=3)


@pytest.mark.slow
def test_plan_costs_the_reference_forward_of_every_trained_step(monkeypatch):
    from learner.algorithms.d3po import D3PO
    from rlcm.planning.plan import plan

    config = load_config("d3po-aesthetic", ["sampling.height=64", "sampling.width=64"])  # 64 px: a cheap measurement
    with_ref = plan(config, "h100-80gb")["flops"]
    monkeypatch.setattr(D3PO, "reference_calls_per_step", classmethod(lambda cls, config: 0))
    without = plan(config, "h100-80gb")["flops"]
    trained = config.sampling.num_steps - 1  # every LCM action step; no classifier-free doubling
    assert with_ref["per_sample"] - without["per_sample"] == trained * with_ref["unet_call"]
