"""The rollout/learner log-prob gap in bf16, and the first PPO pass's ratio with and without π_old recomputation.

Full SD1.5-architecture LCM UNet (`random:SimianLuo/LCM_Dreamshaper_v7`, random weights), rank-8 attention LoRA with
non-zero B, bf16 base on this machine's device. The rollout samples `--batch` chains in eval mode; the learner
evaluates log π at `--train-batch` rows per call, in train mode, at the same weights. Prints the gap
|log π_rollout − log π_learner| (median, p90, max, fraction > the presets' clip range 1e-4) and
the first pass's max |ratio − 1| without `recompute_old_log_probs` and `ratio_first_pass_max_dev` of one PPO update
with it, for each train batch; writes docs/results/old_logprob_gap.md.

    nice -n 5 .venv/bin/python benchmarks/bench_old_logprob_gap.py            # 128 px, batch 4 vs 2 and 1, H=3
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
from pathlib import Path

import numpy as np
import torch

MODEL = "random:SimianLuo/LCM_Dreamshaper_v7"
CLIP_RANGE = 1e-4


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4, help="rollout batch (sampling.batch_size)")
    parser.add_argument(
        "--train-batches", default="2,1", help="learner rows per call (train_batch_size), comma-separated"
    )
    parser.add_argument("--steps", type=int, default=3, help="H, inference steps")
    parser.add_argument("--out", default="docs/results/old_logprob_gap.md")
    args = parser.parse_args()
    train_batches = [int(b) for b in args.train_batches.split(",")]
    if any(args.batch % b for b in train_batches):
        parser.error("every --train-batches value must divide --batch")

    from learner.ppo.learner import LearnerSpec, PPOLearner
    from learner.ppo.old_log_probs import draw_pass_orders, pass_calls, recompute_log_probs
    from learner.ppo.settings import PPOSettings
    from rollout.policies import policy_for, sample_trajectory
    from rollout.settings import LoraSettings

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    where = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    )
    start = time.perf_counter()
    lora = LoraSettings(rank=8, alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    settings = PPOSettings(clip_range=CLIP_RANGE, recompute_old_log_probs=True)
    learner = PPOLearner(
        LearnerSpec(
            model=MODEL,
            lora=lora,
            ppo=settings,
            stat_buffer_size=16,
            stat_min_count=1,
            device=str(device),
            dtype=torch.bfloat16,
        )
    )
    with torch.no_grad():
        for name, param in learner.pipe.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    prompts = [f"a photo of animal number {i}" for i in range(args.batch)]
    res = args.resolution
    trajectory = sample_trajectory(
        learner.pipe, prompts, args.steps, 8.0, torch.Generator(device=device).manual_seed(0), height=res, width=res
    )
    transitions = policy_for(learner.pipe).transitions(learner.pipe, trajectory.to(device))
    initial = copy.deepcopy(learner.state_dict())
    print(f"built and sampled in {time.perf_counter() - start:.0f} s", flush=True)

    columns = {}
    for train_batch in train_batches:
        learner.load_state_dict(copy.deepcopy(initial))  # the weights the rollout sampled with
        # without recomputation: the learner's log π at the rollout's weights, with the calls of a first PPO pass
        order = draw_pass_orders(torch.Generator().manual_seed(0), args.batch, args.steps - 1, 1, True)[0]
        learner.pipe.unet.train()
        learner_lp = recompute_log_probs(
            learner.pipe.unet, transitions, pass_calls(order, train_batch, args.steps - 1), trajectory.log_probs.shape
        )
        learner.pipe.unet.eval()
        delta = (learner_lp - trajectory.log_probs.to(device)).flatten().cpu().numpy()
        gap = np.abs(delta)
        # with recomputation: one PPO update; every call before its optimizer step (grad_accum_steps = batch / train
        # batch)
        learner.spec.ppo = settings.model_copy(
            update={"train_batch_size": train_batch, "grad_accum_steps": args.batch // train_batch}
        )
        metrics = learner.train(trajectory, np.linspace(-1, 1, args.batch))
        columns[train_batch] = [
            f"{gap.size}",
            f"{np.median(gap):.3g}",
            f"{np.quantile(gap, 0.9):.3g}",
            f"{gap.max():.3g}",
            f"{(gap > CLIP_RANGE).mean():.2f}",
            f"{np.abs(np.expm1(delta)).max():.3g}",
            f"{(np.abs(np.expm1(delta)) > CLIP_RANGE).mean():.2f}",
            f"{metrics['ratio_first_pass_max_dev']:.3g}",
            f"{metrics['clipfrac']:.3f}",
            f"{metrics['old_logprob_gap_max']:.3g}",
        ]
        print(
            f"train batch {train_batch}: " + ", ".join(f"{k} {v}" for k, v in zip(MEASURES, columns[train_batch])),
            flush=True,
        )

    lines = [
        "# Rollout/learner log-prob gap (π_old recomputation)",
        "",
        f"`benchmarks/bench_old_logprob_gap.py`: {MODEL}, rank-8 attention LoRA (B ≠ 0), bf16 base, {res} px, "
        f"H={args.steps}, "
        f"rollout batch {args.batch} (eval mode) vs the learner's train batch (train mode), same weights. Device: "
        f"{where}; "
        f"{time.perf_counter() - start:.0f} s in all. The first pass's ratio without recomputation is exp(Δ) of the "
        "same calls "
        "(the forward rounds the same with and without grad); with it, one PPO update with every call before its "
        "optimizer step.",
        "",
        "| measure | " + " | ".join(f"rollout batch {args.batch} vs train batch {b}" for b in train_batches) + " |",
        "|---|" + "---|" * len(train_batches),
        *[f"| {m} | " + " | ".join(columns[b][i] for b in train_batches) + " |" for i, m in enumerate(MEASURES)],
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


MEASURES = (
    "pairs (sample, step)",
    "gap median",
    "gap p90",
    "gap max",
    f"fraction of pairs with gap > clip range {CLIP_RANGE:g}",
    "ratio_first_pass_max_dev, recompute_old_log_probs=false",
    "fraction of first-pass ratios outside 1 ± clip range, recompute false",
    "ratio_first_pass_max_dev, recompute_old_log_probs=true",
    "clipfrac of that update, recompute true",
    "old_logprob_gap_max of that update",
)


if __name__ == "__main__":
    main()
