"""What a person watching a run sees: a progress bar with the key numbers, one log line per epoch,
TensorBoard (and optionally W&B) scalars and sample grids, and plots in the run folder."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from learner.algorithms import ALGORITHMS
from learner.algorithms.base import Algorithm
from rlcm.config.schema import TrainConfig
from rlcm.runs.epochs import epoch_label

logger = logging.getLogger(__name__)


def _algorithm(row: dict) -> type[Algorithm]:
    return ALGORITHMS.get(row.get("algorithm", "rlcm"), ALGORITHMS["rlcm"])


def epoch_line(row: dict, total: int) -> str:
    """One line per epoch: reward, the algorithm's diagnostics, time, samples."""
    parts = [
        epoch_label(row["epoch"], total),
        f"reward {row['reward_mean']:.4f} ± {row.get('reward_std', math.nan):.4f}",
    ]
    if row.get("skipped_update"):
        parts.append("update skipped (no valid reward)")
    else:
        parts.extend(f"{label} {row.get(key, math.nan):{spec}}" for key, label, spec in _algorithm(row).summary)
        if "monitor_reward_mean" in row:
            parts.append(f"monitor {row['monitor_reward_mean']:.4f}")
    parts.append(f"{row['time_epoch_s']:.1f} s/epoch")
    if (speed := throughput(row)) is not None:
        parts.append(speed)
    parts.append(
        f"samples {row['samples_seen']}" + (f", {row['num_invalid']} invalid" if row.get("num_invalid") else "")
    )
    if row.get("reward_error"):
        parts.append(f"reward error: {row['reward_error']}")
    return "  ".join(parts)


def throughput(row: dict) -> str | None:
    """ "3.21 samples/s, 410 UNet images/s, MFU 31%" from the row's perf_* fields (MFU on known GPUs), or None."""
    if "perf_samples_per_s" not in row:
        return None
    text = f"{row['perf_samples_per_s']:.3g} samples/s, {row['perf_unet_images_per_s']:.3g} UNet images/s"
    return text + (f", MFU {row['perf_mfu']:.0%}" if "perf_mfu" in row else "")


def gap_warning(row: dict, clip_range: float, section: str = "train") -> str | None:
    """The warning for a metrics row whose rollout/learner gap exceeds the clip range, or None."""
    gap = row.get("old_logprob_gap_max")
    if not isinstance(gap, (int, float)) or not gap > clip_range:
        return None
    fix = (
        f"; π_old is the learner's own ({section}.recompute_old_log_probs), so the first PPO pass starts at ratio 1"
        if row.get("old_logprob_recomputed")
        else f"; PPO clips on this noise: set {section}.recompute_old_log_probs=true"
    )
    return (
        f"rollout and learner log-probs differ by up to {gap:.3g} (median "
        f"{row.get('old_logprob_gap_median', float('nan')):.3g}) at the same weights, more than the clip range "
        f"{clip_range:g}: numerical noise of the model dtype{fix}"
    )


class EpochProgress:
    """Progress bar (postfix: reward_mean, approx_kl or divergence, s/epoch, samples/s, MFU), log lines, tracking,
    plots."""

    def __init__(self, root: Path, config: TrainConfig, start_epoch: int):
        self.root, self.total, self.run = root, config.run.epochs, config.run
        self.clip_range, self.section = getattr(config.settings, "clip_range", None), config.algo.section
        self.gap_warned = False  # the rollout/learner log-prob gap is reported once per run
        # the bar only on a terminal (disable=None); logs (ray job logs, files) get one line per epoch
        self.bar = tqdm(
            desc=f"rlcm train ({config.algorithm})",
            unit="epoch",
            total=self.total,
            initial=start_epoch,
            dynamic_ncols=True,
            disable=None,
        )
        self.tracker = None
        if config.run.tensorboard or config.run.wandb:
            from rlcm.runs.tracking import RunTracker

            self.tracker = RunTracker(
                root,
                tensorboard=config.run.tensorboard,
                wandb=config.run.wandb,
                wandb_project=config.run.wandb_project,
                run_name=root.name,
                config=config.model_dump(mode="json"),
                start_epoch=start_epoch,
            )

    def epoch_done(self, row: dict, grid: np.ndarray | None) -> None:
        self.bar.update(1)
        postfix = {"reward_mean": f"{row['reward_mean']:.4f}", "s/epoch": f"{row['time_epoch_s']:.1f}"}
        if "perf_samples_per_s" in row:
            postfix["samples/s"] = f"{row['perf_samples_per_s']:.3g}"
        if "perf_mfu" in row:
            postfix["MFU"] = f"{row['perf_mfu']:.0%}"
        key, label, _ = (_algorithm(row).summary or ((None, None, None),))[0]
        if row.get(key) is not None:
            postfix[label] = f"{row[key]:.3g}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.write(epoch_line(row, self.total))
        if (
            not self.gap_warned
            and self.clip_range is not None
            and (warning := gap_warning(row, self.clip_range, self.section))
        ):
            logger.warning("rlcm: warning: %s", warning)
            self.gap_warned = True
        if self.tracker is not None:
            self.tracker.log_epoch(row, grid)
        if self.run.plots and (grid is not None or row["epoch"] == self.total - 1):
            from rlcm.runs.plots import plot_run

            plot_run(self.root)

    def close(self) -> None:
        self.bar.close()
        if self.tracker is not None:
            self.tracker.close()
