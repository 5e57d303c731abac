"""`rlcm` command line: train, plan, scale, submit, rewards serve, label, eval, plot, sample."""

from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
from pathlib import Path

from rlcm.runs.epochs import epoch_label

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

DEFAULT_OUTPUT = "runs/{name}"


def _train(args: argparse.Namespace) -> int:
    from rlcm.config.schema import DEFAULT_PRESET, load_config
    from rlcm.runs.folder import OutputDir
    from rlcm.runs.integrity import prepare_resume, require_run
    from rlcm.runs.lock import run_lock

    config = load_config(args.config, args.set)
    name = Path(args.config).stem if args.config else DEFAULT_PRESET
    if args.dry_run:
        from rlcm.commands.dryrun import run_dry_run

        run_dry_run(
            name,
            config,
            Path(args.output_dir or DEFAULT_OUTPUT.format(name=name + "-dry-run")),
            args.dry_run_resolution,
            args.verbose,
        )
        return 0
    output_dir = Path(args.output_dir or DEFAULT_OUTPUT.format(name=name))
    if args.resume:
        require_run(output_dir)
    from rlcm.commands.checks import validate_before_ray

    # refuse before creating the run folder: a refused start leaves nothing behind
    validate_before_ray(config, joining_cluster=bool(args.address or os.environ.get("RAY_ADDRESS")))
    OutputDir(output_dir).prepare(args.resume)
    with run_lock(output_dir):
        point, notes = prepare_resume(output_dir, config.run.epochs) if args.resume else (None, [])
        for note in notes:
            print(f"rlcm: {note}")
        if point and point.epoch + 1 >= config.run.epochs:
            print(
                f"{output_dir} is complete (its last epoch, {epoch_label(point.epoch, config.run.epochs)}, is done); "
                "nothing to resume. "
                "Raise run.epochs with --set to train longer."
            )
            return 0
        from cluster.restarts import train

        rows = train(config, output_dir, resume=args.resume, verbose=args.verbose, address=args.address)
    if rows:
        print(summary_line(rows, config.run.epochs))
    print(f"outputs in {output_dir}")
    return 0


def summary_line(rows: list[dict], total: int) -> str:
    """First and last reward of a run (`rlcm.runs.epochs` numbering)."""
    first, last = rows[0], rows[-1]
    return (
        f"reward_mean {first['reward_mean']:.4f} ({epoch_label(first['epoch'], total)}) -> "
        f"{last['reward_mean']:.4f} ({epoch_label(last['epoch'], total)})"
    )


def _plan(args: argparse.Namespace) -> int:
    from rlcm.config.schema import load_config
    from rlcm.planning.plan import plan_main

    return plan_main(Path(args.config).stem, load_config(args.config, args.set), args.gpu, args.mfu, args.json)


def _serve(args: argparse.Namespace) -> int:
    from rewards_service.cli import serve_main

    if not args.standalone:
        from cluster.ray_setup import init_ray

        print(f"rlcm: {init_ray(args.address, quiet=not args.verbose, log_to_driver=args.verbose)}")
    serve_main(args.config, standalone=args.standalone, host=args.host, port=args.port)
    return 0


def _label(args: argparse.Namespace) -> int:
    from rlcm.labelling.server import serve

    serve(Path(args.run), args.host, args.port, args.token, args.staleness, args.repeat_fraction)
    return 0


def _scale(args: argparse.Namespace) -> int:
    from cluster.control import scale_rollouts

    target = scale_rollouts(args.output_dir, args.rollout_actors, address=args.address)
    print(f"rollout actors for {args.output_dir}: target {target} (new actors start from the current adapter)")
    return 0


def _submit(args: argparse.Namespace) -> int:
    from cluster.entrypoint import submit_train_job

    def submitted(job_id: str) -> None:
        print(f"submitted job {job_id}; follow it with: ray job logs --address {args.address} --follow {job_id}")

    job_id, status = submit_train_job(
        args.address, args.config, args.output_dir, args.set, wait=args.wait, on_submitted=submitted
    )
    print(f"job {job_id}: {status}")
    return 0 if not args.wait or status == "SUCCEEDED" else 1


def _sample(args: argparse.Namespace) -> int:
    import torch

    from rlcm.commands.steer import check_steer_options, sample_steered
    from rlcm.runs.checkpoint_record import read_record, sampling_settings
    from rollout.models import load_pipeline

    check_steer_options(args)
    if args.lora is None and args.model is None:
        raise ValueError("rlcm sample needs --lora (a trained checkpoint) or --model (the base model alone)")
    recorded = read_record(Path(args.lora)) if args.lora else {}
    sampling, origin = sampling_settings(recorded, args.steps, args.guidance_scale)
    print(f"rlcm sample: {origin}")
    model = args.model or recorded.get("model", "tiny")
    pipe = load_pipeline(model, seed=recorded.get("model_seed", 0))
    if args.lora:
        pipe.load_lora_weights(args.lora)
    generator = torch.Generator(device=pipe.device).manual_seed(args.seed)
    if args.steer != "none":
        image = sample_steered(args, pipe, sampling, generator)
    else:
        image = pipe(
            args.prompt,
            num_inference_steps=sampling.num_steps,
            guidance_scale=sampling.guidance_scale,
            height=sampling.height,
            width=sampling.width,
            **sampling.sampler_options(),
            generator=generator,
        ).images[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out)
    print(f"wrote {args.out}")
    return 0


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be within [0, 1], got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from learner.algorithms import ALGORITHMS
    from rlcm.commands.helpfmt import DefaultsHelpFormatter
    from rlcm.config.schema import PRESETS

    algorithms = ", ".join(algo.title for algo in ALGORITHMS.values())
    parser = argparse.ArgumentParser(
        prog="rlcm",
        description=f"Reinforcement learning of LoRA adapters for latent consistency models (and Stable Diffusion) on "
        f"Ray, toward a reward: {algorithms}.",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="full tracebacks, actor logs and library warnings")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=summary, description=description, formatter_class=DefaultsHelpFormatter)

    train = command(
        "train",
        f"train a LoRA with one of {len(ALGORITHMS)} algorithms (default: the toy CPU demo)",
        f"Train a LoRA adapter as a config says: a preset or a YAML file, its `algorithm:` one of {algorithms} "
        "(`rlcm`: RLCM). Without --config: preset tiny-cpu, a toy LCM with random weights learning JPEG "
        "compressibility on the CPU, no downloads. Starts a local Ray on 127.0.0.1 unless --address or RAY_ADDRESS "
        "names a cluster.",
    )

    train.add_argument("--config", help=f"YAML file or preset ({', '.join(PRESETS)}; default tiny-cpu)")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. train.learning_rate=3e-4",
    )
    train.add_argument("--output-dir", help="run folder (default runs/<config name>)")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    train.add_argument("--address", help="join this Ray cluster (default: RAY_ADDRESS if set, else a fresh local Ray)")
    train.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS, help="as rlcm --verbose")
    train.add_argument(
        "--dry-run",
        action="store_true",
        help="run the preset end to end at its real architectures with random weights, small images, 2 epochs, on CPU",
    )
    train.add_argument(
        "--dry-run-resolution", type=positive_int, default=64, metavar="PX", help="image size of --dry-run (default 64)"
    )
    train.set_defaults(func=_train)

    plan = command(
        "plan",
        "memory, FLOPs and fit of a preset on a GPU kind, before renting one",
        "Estimate, for a config on a GPU kind, the memory of each actor (measured on the meta device at the real "
        "architectures), the FLOPs per sample, the samples/s at an assumed MFU, and how to place the actors.",
    )
    plan.add_argument("--config", required=True, help="YAML file or preset")
    plan.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    plan.add_argument(
        "--gpu",
        default="h100-80gb",
        help="GPU kind as usually written: A10G, L4, RTX 4090, A6000, L40S, A100-40GB, A100 (80GB), H100, H200, B200",
    )
    plan.add_argument("--mfu", type=float, default=0.35, help="model FLOP utilization assumed for samples/s")
    plan.add_argument("--json", action="store_true", help="print JSON instead of the table")
    plan.set_defaults(func=_plan)

    scale = command(
        "scale",
        "change the number of rollout actors of a running `rlcm train`",
        "Ask a running `rlcm train` to grow or shrink its rollout actors (the epoch rows' `num_rollout_actors`); "
        "new actors start from the current adapter, removed ones finish their batch. The run's Ray cluster must be "
        "reachable: --address, or RAY_ADDRESS.",
    )
    scale.add_argument("--output-dir", required=True, help="the --output-dir of the running run")
    scale.add_argument("--rollout-actors", type=positive_int, required=True, help="the number of rollout actors wanted")
    scale.add_argument(
        "--address", help="the run's cluster: host:port (printed by rlcm train) or auto; default RAY_ADDRESS"
    )
    scale.set_defaults(func=_scale)

    submit = command(
        "submit",
        "submit `rlcm train` as a Ray job",
        "Submit `rlcm train` to a Ray cluster's job server with this checkout as the working directory; prints the "
        "job id and the `ray job logs` command that follows it.",
    )
    submit.add_argument("--address", default="http://127.0.0.1:8265", help="the Ray dashboard address")
    submit.add_argument("--config", required=True, help="preset or YAML path (relative to the working dir)")
    submit.add_argument("--output-dir", required=True, help="run folder on the cluster (shared storage)")
    submit.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value (repeatable)"
    )
    submit.add_argument("--wait", action="store_true", help="block until the job ends; exit 1 unless it succeeded")
    submit.set_defaults(func=_submit)

    rewards = command(
        "rewards", "the reward service", "The reward service: an HTTP API that scores images (docs/rewards.md)."
    ).add_subparsers(dest="rewards_command", required=True, metavar="COMMAND")
    serve = rewards.add_parser(
        "serve",
        help="start the reward service (Ray Serve, or uvicorn with --standalone)",
        description="Start the reward service: a Ray Serve deployment (on a fresh local Ray, or the cluster of "
        "--address / RAY_ADDRESS), or with --standalone a FastAPI app under uvicorn with its scorers in process.",
        formatter_class=DefaultsHelpFormatter,
    )
    serve.add_argument("--config", help="reward service YAML (default: the two JPEG rewards)")
    serve.add_argument(
        "--standalone", action="store_true", help="run the FastAPI app under uvicorn with scorers in process, no Ray"
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    serve.add_argument("--port", type=int, default=8000, help="TCP port")
    serve.add_argument(
        "--address", help="run Serve on this Ray cluster (default: RAY_ADDRESS if set, else a fresh local Ray)"
    )
    serve.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS, help="as rlcm --verbose")
    serve.set_defaults(func=_serve)

    label = command(
        "label",
        "serve the labelling page: people judge pairs of images while a preference algorithm trains",
        "Serve a web page where people judge pairs of images of one prompt (keys: left/right arrow choose, down "
        "arrow a tie, space skips). Judgements go into <run>/judgements.sqlite, where the trainer reads them. "
        "Prints the address to open, with the token in it.",
    )
    label.add_argument("--run", required=True, help="the run folder (the --output-dir of `rlcm train`)")
    label.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    label.add_argument("--port", type=positive_int, default=8010, help="TCP port")
    label.add_argument(
        "--token", help="the page's token (default: $RLCM_LABEL_TOKEN, else a random one printed with the address)"
    )
    label.add_argument(
        "--staleness",
        type=nonnegative_int,
        metavar="N",
        help="judge only pairs at most N policy versions older than the current one (default: no bound)",
    )
    label.add_argument(
        "--repeat-fraction",
        type=fraction,
        default=0.1,
        metavar="F",
        help="share of the pairs that, once judged, are offered once more to another labeller (their agreement is "
        "labeller_agreement; default 0.1)",
    )
    label.set_defaults(func=_label)

    from rlcm.commands.evaluate import add_eval_parser
    from rlcm.commands.steer import add_steer_arguments
    from rlcm.runs.plots import add_plot_parser

    add_eval_parser(commands)
    add_plot_parser(commands)

    sample = commands.add_parser(
        "sample",
        help="generate an image with a trained LoRA or the base model, optionally steered by a reward",
        formatter_class=DefaultsHelpFormatter,
        description="Sample one image from a checkpoint with the stock diffusers pipeline, or steered toward a reward "
        "(--steer). Steps, guidance and size default to what the checkpoint was trained with (its rlcm_model.json; "
        "8 steps, guidance 8 if it records none).",
    )
    sample.add_argument("--lora", help="a checkpoints/epoch-NNNN folder (without it: the base --model alone)")
    sample.add_argument("--prompt", required=True, help="the text prompt")
    sample.add_argument("--steps", type=positive_int, help="inference steps H (default: the checkpoint's)")
    sample.add_argument("--guidance-scale", type=float, help="LCM guidance scale w (default: the checkpoint's)")
    sample.add_argument("--seed", type=int, default=0, help="seed of the initial noise")
    sample.add_argument(
        "--model", help="base model (default: the one recorded in the checkpoint; needed without --lora)"
    )
    sample.add_argument("--out", required=True, help="output image file (.png)")
    add_steer_arguments(sample)
    sample.set_defaults(func=_sample)
    return parser


def explain(error: BaseException) -> str:
    """The error's message; for one raised inside a Ray actor or task, the root cause's one line."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException) and cause is not error:
        return explain(cause)
    if hasattr(error, "errors") and type(error).__name__ == "ValidationError":  # pydantic: one line, field by field
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in error.errors())
    text = str(error).strip()
    if not type(error).__module__.startswith("ray"):
        return text
    raised = [
        line.strip() for line in text.splitlines() if re.match(r"^\s*[A-Za-z_][\w.]*(Error|Exception|Exit): ", line)
    ]
    return raised[-1] if raised else (text.splitlines() or [type(error).__name__])[0]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:
        quiet_libraries()
    from cluster.interrupts import Interrupted

    try:
        return args.func(args)
    except Interrupted as stop:
        print(f"rlcm: {stop.line}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print("rlcm: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if args.verbose:
            traceback.print_exc()
        expected = isinstance(error, (ValueError, OSError, RuntimeError, ConnectionError, ImportError))
        from_ray = type(error).__module__.startswith("ray")
        message = explain(error) if expected or from_ray else f"{type(error).__name__}: {error}"
        hint = "" if args.verbose or (expected and not from_ray) else " (rerun with --verbose for the full trace)"
        print(f"rlcm: error: {message}{hint}", file=sys.stderr)
        return 2 if expected or from_ray else 1


def quiet_libraries() -> None:
    """Default console: no Ray/diffusers/transformers warning spam (`--verbose` keeps it)."""
    import logging
    import warnings

    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in ("ray", "ray.serve", "diffusers", "transformers", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
