"""`rlcm sample --steer`: best-of-N and FK steering of the LCM or DDIM sampler by a reward, scored in process or by a
reward service (standalone or Serve) over HTTP."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from rollout.steering_kinds import POTENTIALS, resampling_steps

STEER_METHODS = ("none", "best-of-n", "fk")
STEER_OPTIONS = {
    "particles": "--particles",
    "potential": "--potential",
    "lam": "--lam",
    "resample_every": "--resample-every",
    "service_url": "--service-url",
}
FK_ONLY = ("potential", "lam", "resample_every")


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
    group = parser.add_argument_group("steering")
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
    group.add_argument("--reward", default="jpeg_compressibility", help="the reward steered toward")
    group.add_argument(
        "--service-url",
        help="score --reward on the reward service at this URL (standalone or Serve; token: RLCM_REWARDS_TOKEN), "
        "not in process",
    )


def steering_client(reward: str, service_url: str | None):
    """The reward client steering scores through: HTTP to `service_url`, else the registry's scorer in process."""
    from rewards_service.client import HttpRewardClient, InProcessRewardClient

    if service_url:
        return HttpRewardClient(service_url, reward)
    from rewards_service.registry import build_scorer

    return InProcessRewardClient(build_scorer(reward))


def check_steer_options(args: argparse.Namespace) -> None:
    """ValueError for a steering option that the chosen method does not use."""
    unused = {"none": STEER_OPTIONS, "best-of-n": {k: v for k, v in STEER_OPTIONS.items() if k in FK_ONLY}}
    for key, flag in unused.get(args.steer, {}).items():
        if getattr(args, key) is not None:
            raise ValueError(f"{flag} does not apply to --steer {args.steer}")


def sample_steered(args: argparse.Namespace, pipe, sampling, generator):
    """The steered image of `args.prompt` (a PIL image); prints the compute spent per image."""
    from PIL import Image

    from rollout.steering import steer
    from rollout.steering.scoring import client_score

    method, particles = args.steer, args.particles or 4
    potential, lam = args.potential or "diff", 1.0 if args.lam is None else args.lam
    every = 1 if args.resample_every is None else args.resample_every
    resample_at = resampling_steps(sampling.num_steps, every) if method == "fk" else []
    client = steering_client(args.reward, args.service_url)
    try:
        result = steer(
            pipe,
            [args.prompt],
            sampling.num_steps,
            sampling.guidance_scale,
            generator,
            client_score(client),
            particles,
            method,
            potential,
            lam,
            resample_at,
            reward_name=args.reward,
            height=sampling.height,
            width=sampling.width,
            **sampling.sampler_options(),
        )
    finally:
        client.close()
    compute = result.compute
    how = f"fk, potential {potential}, λ {lam:g}, resampling after steps {resample_at}" if method == "fk" else method
    calls, unet = compute["reward_calls_per_image"], compute["unet_evals_per_image"]
    guided = " x 2 for guidance" if unet == 2 * particles * sampling.num_steps else ""
    print(
        f"compute per image: {unet:g} UNet evaluations ({particles} particles x {sampling.num_steps} steps{guided}), "
        f"{calls:g} reward call{'' if calls == 1 else 's'} scoring "
        f"{compute['images_scored_per_image']:g} images ({how}); {args.reward} of the chosen image "
        f"{result.rewards[0].item():.4g}"
    )
    return Image.fromarray(result.images[0].permute(1, 2, 0).cpu().numpy())
