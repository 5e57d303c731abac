"""Experiment tracking: every epoch's metrics row as scalars and the sample grid as an image, in TensorBoard
(`<run>/tensorboard/`, torch's SummaryWriter) and optionally Weights & Biases.

Scalars are the row's numbers at step = epoch, under the row's own key names (so TensorBoard and
`metrics.jsonl` agree). Nested dicts are flattened with "/" (`rollout_actors/0/images_per_s`,
`staleness_hist/0`); booleans are logged as 0/1; strings, lists and non-finite numbers are skipped.
On resume (`start_epoch` > 0) TensorBoard drops the events at steps ≥ start_epoch that the stopped run
wrote after its last checkpoint (purge_step), and W&B continues the same run (its id is kept in the run folder).
"""

from __future__ import annotations

import json
import math
import secrets
from numbers import Real
from pathlib import Path

import numpy as np

WANDB_ID_FILE = "wandb_run_id.txt"


def scalars(row: dict, prefix: str = "") -> dict[str, float]:
    """The finite numeric values of a metrics row, nested dicts flattened with "/"."""
    flat = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(scalars(value, f"{name}/"))
        elif isinstance(value, (Real, np.number)) and math.isfinite(float(value)):
            flat[name] = float(value)
    return flat


def check_grid(grid: np.ndarray) -> np.ndarray:
    """A sample grid must be uint8 HWC with 3 (RGB) or 4 (RGBA) channels."""
    grid = np.asarray(grid)
    if grid.dtype != np.uint8 or grid.ndim != 3 or grid.shape[-1] not in (3, 4):
        raise ValueError(f"a sample grid must be a uint8 [H, W, 3] array, got {grid.dtype} {list(grid.shape)}")
    return grid


class RunTracker:
    """Logs metrics rows and sample grids of one run to TensorBoard and/or W&B."""

    def __init__(
        self,
        run_dir: Path,
        tensorboard: bool = True,
        wandb: bool = False,
        wandb_project: str = "rlcm",
        run_name: str | None = None,
        config: dict | None = None,
        start_epoch: int = 0,
    ):
        self.run_dir = Path(run_dir)
        self.writer = None
        self.wandb_run = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                raise ImportError(
                    f"TensorBoard logging needs the tensorboard package ({error}): pip install tensorboard, or set "
                    "run.tensorboard=false"
                ) from None
            self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=start_epoch or None)
            if config is not None:
                self.writer.add_text(
                    "config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```", global_step=start_epoch
                )
        if wandb:
            self.wandb_run = self._start_wandb(wandb_project, run_name or self.run_dir.name, config, start_epoch)

    def _start_wandb(self, project: str, name: str, config: dict | None, start_epoch: int):
        try:
            import wandb
        except ImportError:
            raise ImportError("W&B logging needs wandb: pip install 'rlcm[wandb]' (or set run.wandb=false)") from None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        id_file = self.run_dir / WANDB_ID_FILE
        if start_epoch and id_file.is_file():
            run_id = id_file.read_text().strip()
        else:
            run_id = secrets.token_hex(4)
            id_file.write_text(run_id)
        return wandb.init(project=project, name=name, id=run_id, resume="allow", config=config, dir=str(self.run_dir))

    def log_epoch(self, row: dict, grid: np.ndarray | None = None) -> None:
        """All numeric values of `row` at step row["epoch"]; `grid` (uint8 HWC) as the image "samples"."""
        step = int(row["epoch"])
        values = scalars(row)
        image = check_grid(grid) if grid is not None else None
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, global_step=step)
            if image is not None:
                self.writer.add_image("samples", image, global_step=step, dataformats="HWC")
            self.writer.flush()
        if self.wandb_run is not None:
            import wandb

            logged = dict(values)
            if image is not None:
                logged["samples"] = wandb.Image(image)
            self.wandb_run.log(logged, step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
