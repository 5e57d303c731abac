"""`rlcm sample --steer`: best-of-N and FK steering of the LCM sampler by a reward scored in process."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import numpy as np

from rollout.steering_kinds import POTENTIALS

STEER_METHODS = ("none", "best-of-n", "fk")
STEER_OPTIONS = {
    "particles": "--particles",
    "potential": "--potential",
    "lam": "--lam",
    "resample_every": "--resample-every",
}


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than `minimum`."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def add_steer_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the steering options of `rlcm sample`."""
    group = parser.add_argument_group("steering (LCM models)")
    group.add_argument(
        "--steer",
        choices=STEER_METHODS,
        default="none",
        help="best-of-n: keep the particle with the highest final reward; fk: Feynman-Kac steering, resampling the "
        "particles by a reward potential at intermediate steps",
    )
    group.add_argument("--particles", type=at_least(1), help="particles N sampled per image (default 4)")
    group.add_argument("--potential", choices=POTENTIALS, help="FK potential (default diff)")
    group.add_argument("--lam", type=float, help="FK inverse temperature λ of the potential (default 1)")
    group.add_argument(
        "--resample-every", type=at_least(0), help="FK: resample after every K-th step, 0 never (default 1)"
    )
    group.add_argument("--reward", default="jpeg_compressibility", help="the reward steered toward (in process)")


def resampling_steps(num_steps: int, every: int) -> list[int]:
    """Steps k = K−1, 2K−1, … before the last one (none for K = 0)."""
    return list(range(every - 1, num_steps - 1, every)) if every else []


def reward_function(scorer):
    """`scorer.score` as steering calls it: rewards as floats, NaN where the scorer marks a sample invalid."""

    def score(images: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
        result = scorer.score(images, list(prompts))
        return np.where(np.asarray(result.valid, dtype=bool), np.asarray(result.rewards, dtype=np.float64), np.nan)

    return score


def check_steer_options(args: argparse.Namespace) -> None:
    """ValueError for a steering option that the chosen method does not use."""
    unused = {"none": STEER_OPTIONS, "best-of-n": {k: v for k, v in STEER_OPTIONS.items() if k != "particles"}}
    for key, flag in unused.get(args.steer, {}).items():
        if getattr(args, key) is not None:
            raise ValueError(f"{flag} does not apply to --steer {args.steer}")


def sample_steered(args: argparse.Namespace, pipe, sampling, generator):
    """The steered image of `args.prompt` (a PIL image); prints the compute spent per image."""
    from PIL import Image

    from rewards_service.registry import build_scorer
    from rollout.steering import steer_lcm

    method, particles = args.steer, args.particles or 4
    potential, lam = args.potential or "diff", 1.0 if args.lam is None else args.lam
    every = 1 if args.resample_every is None else args.resample_every
    resample_at = resampling_steps(sampling.num_steps, every) if method == "fk" else []
    result = steer_lcm(
        pipe,
        [args.prompt],
        sampling.num_steps,
        sampling.guidance_scale,
        generator,
        reward_function(build_scorer(args.reward)),
        particles,
        method,
        potential,
        lam,
        resample_at,
        reward_name=args.reward,
        height=sampling.height,
        width=sampling.width,
        original_inference_steps=sampling.original_inference_steps,
    )
    compute = result.compute
    how = f"fk, potential {potential}, λ {lam:g}, resampling after steps {resample_at}" if method == "fk" else method
    calls = compute["reward_calls_per_image"]
    print(
        f"compute per image: {compute['unet_evals_per_image']:g} UNet evaluations ({particles} particles x "
        f"{sampling.num_steps} steps), {calls:g} reward call{'' if calls == 1 else 's'} scoring "
        f"{compute['images_scored_per_image']:g} images ({how}); {args.reward} of the chosen image "
        f"{result.rewards[0].item():.4g}"
    )
    return Image.fromarray(result.images[0].permute(1, 2, 0).cpu().numpy())
