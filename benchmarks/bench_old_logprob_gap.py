"""The rollout/learner log-prob gap in bf16, and the first PPO pass's ratio with and without π_old recomputation.

Full SD1.5-architecture LCM UNet (`random:SimianLuo/LCM_Dreamshaper_v7`, random weights), rank-8 attention LoRA with
non-zero B, bf16 base on this machine's device. The rollout samples `--batch` chains in eval mode; the learner
evaluates log π at `--train-batch` rows per call, in train mode, at the same weights. Prints the gap
|log π_rollout − log π_learner| (median, p90, max, fraction > the presets' clip range 1e-4) and
`ratio_first_pass_max_dev` of one PPO update without and with `recompute_old_log_probs`; writes
benchmarks/RESULTS_old_logprob_gap.md.

    nice -n 5 .venv/bin/python benchmarks/bench_old_logprob_gap.py            # 128 px, batch 4 vs 2, H=3
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
    parser.add_argument("--train-batch", type=int, default=2, help="learner rows per call (train_batch_size)")
    parser.add_argument("--steps", type=int, default=3, help="H, inference steps")
    parser.add_argument("--out", default="benchmarks/RESULTS_old_logprob_gap.md")
    args = parser.parse_args()
    if args.batch % args.train_batch:
        parser.error("--train-batch must divide --batch")

    from learner.learner import LearnerSpec, PPOLearner
    from learner.old_log_probs import draw_pass_orders, pass_calls, recompute_log_probs
    from learner.settings import PPOSettings
    from rollout.policies import policy_for
    from rollout.policy import sample_trajectory
    from rollout.settings import LoraSettings

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    start = time.perf_counter()
    settings = PPOSettings(train_batch_size=args.train_batch, grad_accum_steps=args.batch // args.train_batch, clip_range=CLIP_RANGE)
    lora = LoraSettings(rank=8, alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    learner = PPOLearner(LearnerSpec(model=MODEL, lora=lora, ppo=settings, stat_buffer_size=16, stat_min_count=1, device=str(device), dtype=torch.bfloat16))
    with torch.no_grad():
        for name, param in learner.pipe.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    prompts = [f"a photo of animal number {i}" for i in range(args.batch)]
    res = args.resolution
    trajectory = sample_trajectory(learner.pipe, prompts, args.steps, 8.0, torch.Generator(device=device).manual_seed(0), height=res, width=res)
    print(f"built and sampled in {time.perf_counter() - start:.0f} s", flush=True)

    # the learner's log π at the rollout's weights, with the calls of a first PPO pass
    unet = learner.pipe.unet
    order = draw_pass_orders(torch.Generator().manual_seed(0), args.batch, args.steps - 1, 1, True)[0]
    unet.train()
    recomputed = recompute_log_probs(unet, policy_for(learner.pipe).transitions(learner.pipe, trajectory.to(device)),
                                     pass_calls(order, args.train_batch, args.steps - 1), trajectory.log_probs.shape)
    unet.eval()
    gap = (trajectory.log_probs.to(device) - recomputed).abs().flatten().cpu().numpy()

    advantages = np.linspace(-1, 1, args.batch)
    initial = copy.deepcopy(learner.state_dict())
    first_pass = {}
    for recompute in (False, True):
        learner.load_state_dict(copy.deepcopy(initial))
        learner.spec.ppo = settings.model_copy(update={"recompute_old_log_probs": recompute})
        metrics = learner.train(trajectory, advantages)
        first_pass[recompute] = metrics
        print(f"recompute_old_log_probs={str(recompute).lower()}: ratio_first_pass_max_dev {metrics['ratio_first_pass_max_dev']:.3g}, "
              f"clipfrac {metrics['clipfrac']:.3f}, old_logprob_gap_max {metrics['old_logprob_gap_max']:.3g}", flush=True)

    rows = [
        ("pairs (sample, step)", f"{gap.size}"),
        ("gap median", f"{np.median(gap):.3g}"),
        ("gap p90", f"{np.quantile(gap, 0.9):.3g}"),
        ("gap max", f"{gap.max():.3g}"),
        (f"fraction of pairs with gap > clip range {CLIP_RANGE:g}", f"{(gap > CLIP_RANGE).mean():.2f}"),
        ("ratio_first_pass_max_dev, recompute_old_log_probs=false", f"{first_pass[False]['ratio_first_pass_max_dev']:.3g}"),
        ("clipfrac of that update", f"{first_pass[False]['clipfrac']:.3f}"),
        ("ratio_first_pass_max_dev, recompute_old_log_probs=true", f"{first_pass[True]['ratio_first_pass_max_dev']:.3g}"),
        ("clipfrac of that update", f"{first_pass[True]['clipfrac']:.3f}"),
        ("wall-clock of the benchmark", f"{time.perf_counter() - start:.0f} s"),
    ]
    lines = [
        "# Rollout/learner log-prob gap (π_old recomputation)", "",
        f"`benchmarks/bench_old_logprob_gap.py`: {MODEL}, rank-8 attention LoRA (B ≠ 0), bf16 base, {res} px, H={args.steps}, "
        f"rollout batch {args.batch} (eval mode) vs train batch {args.train_batch} (train mode), grad_accum_steps "
        f"{args.batch // args.train_batch} (every call before the first optimizer step). Device: {where}.", "",
        "| measure | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows],
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
