"""`rlcm eval`: its command line."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rlcm.commands.helpfmt import DefaultsHelpFormatter
from rlcm.evaluation.evaluate import evaluate
from rlcm.evaluation.inputs import LOCAL_METRICS, PROMPT_PRESETS, parse_runs, read_prompts
from rlcm.evaluation.report import markdown_table
from rlcm.evaluation.settings import EvalSettings
from rollout.steering_kinds import METHODS, POTENTIALS


def comma_list(item_type, choices=None):
    """An argparse type: comma-separated values of `item_type`, each one of `choices` if given, at least one."""

    def parse(text: str) -> list:
        try:
            values = [item_type(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None
        wrong = [v for v in values if (choices is not None and v not in choices) or (item_type is int and v < 1)]
        if not values or wrong:
            expected = f"one or more of {', '.join(choices)}" if choices else "positive integers"
            raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}, comma-separated")
        return values

    return parse


def steering_options(args: argparse.Namespace) -> dict:
    """The EvalSettings fields of the steering options; ValueError for one given without --steer."""
    given = {
        "particles": args.particles,
        "potential": args.potential,
        "lam": args.lam,
        "resample_every": args.resample_every,
        "steer_reward": args.steer_reward,
    }
    given = {key: value for key, value in given.items() if value is not None}
    if given and not args.steer:
        flags = ", ".join("--" + key.replace("_", "-") for key in given)
        raise ValueError(f"{flags} apply to steered rows: pass --steer best-of-n and/or fk")
    return {"steer": args.steer or [], **given}


def _run(args: argparse.Namespace) -> int:
    runs = parse_runs(args.lora or [])
    trained = {}
    for value in args.trained or []:
        name, sep, metric = value.partition("=")
        if not sep or name not in runs:
            raise ValueError(f"--trained {value!r}: expected RUN=METRIC with RUN one of {sorted(runs)}")
        trained[name] = metric
    settings = EvalSettings(
        prompts=read_prompts(args.prompts, args.limit, args.offset),
        metrics=[m.strip() for m in args.metrics.split(",") if m.strip()],
        out=Path(args.out),
        runs=runs,
        trained=trained,
        include_base=args.base or not runs,
        model=args.model,
        seeds=args.seeds,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        batch_size=args.batch_size,
        service_url=args.service_url,
        service_token=os.environ.get("RLCM_REWARDS_TOKEN"),
        device=args.device,
        **steering_options(args),
    )
    report = evaluate(settings)
    print(markdown_table(report))
    print(f"wrote {settings.out / 'eval.json'}, eval.md, grid.png" + (", compute.png" if settings.steer else ""))
    return 0


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Register `rlcm eval` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "eval",
        help="compare tuned LoRAs with each other and their base model on held-out prompts",
        formatter_class=DefaultsHelpFormatter,
        description="Sample the tuned and/or base model on (prompt, seed) pairs with the same noise, score them, and "
        "write eval.json, eval.md and grid.png. Steps, guidance and size default to the checkpoint's "
        "(rlcm_model.json).",
    )
    parser.add_argument(
        "--lora",
        action="append",
        metavar="[NAME=]DIR",
        help="a checkpoints/epoch-NNNN folder; repeat for several runs (NAME defaults to the run folder, or 'tuned' "
        "for one)",
    )
    parser.add_argument(
        "--trained",
        action="append",
        metavar="NAME=METRIC",
        help="the metric run NAME trained on (default: reward.name in the run's config.yaml); marked and left out of "
        "its off-target mean",
    )
    parser.add_argument(
        "--base", action="store_true", help="also evaluate the base model (LoRA off), same noise: paired differences"
    )
    parser.add_argument("--model", help="base model (default: the one recorded in the checkpoint, else tiny)")
    parser.add_argument(
        "--prompts", required=True, help=f"file with one prompt a line, or a preset: {', '.join(PROMPT_PRESETS)}"
    )
    parser.add_argument("--limit", type=int, help="use at most this many prompts")
    parser.add_argument("--offset", type=int, default=0, help="skip the first prompts (e.g. the ones trained on)")
    parser.add_argument(
        "--metrics", required=True, help=f"comma-separated reward names; in process: {', '.join(LOCAL_METRICS)}"
    )
    parser.add_argument("--seeds", type=int, default=4, help="samples per prompt (seeds 0..N-1)")
    parser.add_argument(
        "--steps", type=int, help="inference steps H (default: the checkpoint's, from its rlcm_model.json; else 8)"
    )
    parser.add_argument(
        "--guidance-scale", type=float, help="LCM guidance scale w (default: the checkpoint's; else 8.0)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per pipeline call")
    parser.add_argument(
        "--service-url", help="reward service base URL; its rewards are scored over HTTP (token: RLCM_REWARDS_TOKEN)"
    )
    parser.add_argument("--device", help="cuda, cpu, ... (default: cuda if available)")
    parser.add_argument("--out", required=True, help="output folder for eval.json, eval.md, grid.png")
    steering = parser.add_argument_group(
        "steering: each model evaluated is also sampled steered, per method and particle count, on the same seeds"
    )
    steering.add_argument(
        "--steer",
        type=comma_list(str, METHODS),
        help=f"comma-separated steering methods: {', '.join(METHODS)}; also writes compute.png (the steered reward "
        "against the sampling compute per image)",
    )
    steering.add_argument("--particles", type=comma_list(int), help="comma-separated particle counts N (default 4)")
    steering.add_argument("--potential", choices=POTENTIALS, help="FK potential (default diff)")
    steering.add_argument("--lam", type=float, help="FK inverse temperature λ (default 1)")
    steering.add_argument("--resample-every", type=int, help="FK: resample after every K-th step, 0 never (default 1)")
    steering.add_argument(
        "--steer-reward", help="the reward steered toward (default: the first of --metrics); scored as the metrics are"
    )
    parser.set_defaults(func=_run)
    return parser
