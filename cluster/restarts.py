"""`train`: a run on Ray under the run lock and stop signals; `run_with_restarts` rebuilds it after a lost learner."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ray

from cluster.interrupts import StopRequest
from cluster.ray_setup import init_ray
from cluster.trainer import Trainer
from rlcm.config.schema import TrainConfig
from rlcm.runs.folder import OutputDir
from rlcm.runs.lock import run_lock


def train(
    config: TrainConfig, output_dir: Path, resume: bool = False, verbose: bool = False, address: str | None = None
) -> list[dict]:
    """Run training on the Ray cluster at `address` or RAY_ADDRESS, else on a fresh local one."""
    OutputDir(output_dir).prepare(resume)
    stop = StopRequest()
    with run_lock(output_dir), labelling_page(config, output_dir):
        print(f"rlcm: {init_ray(address, quiet=not verbose, log_to_driver=verbose)}")
        with stop.installed():  # after ray.init: a Ray it starts replaces SIGTERM's handler with one that exits at once
            return run_with_restarts(config, output_dir, resume, stop)


@contextmanager
def labelling_page(config: TrainConfig, output_dir: Path) -> Iterator[None]:
    """Serve the labelling page beside the run while it trains, where the algorithm asks for one (people judge its
    samples and the config says `serve`); prints the address to open, token included, and, every 30 s while an update
    waits for people, how many of its pairs are judged."""
    people = config.algo.labelling(config)
    if people is None:
        yield
        return
    from rlcm.labelling.waiting import WaitNotice
    from rlcm.runs.judgements import JudgementStore

    serve, page = people.serve, None
    if serve is None:
        where = f"serve the page: rlcm label --run {output_dir}"
        print(f"rlcm: each update waits for its pairs' judgements: {where}")
    else:
        from rlcm.labelling.server import start_in_thread

        page = start_in_thread(output_dir, serve.host, serve.port, serve.token, people.staleness, serve.repeat_fraction)
        where = f"open {page.url}"
        print(f"rlcm: labelling page for {output_dir}: {where} (each update waits for its pairs' judgements)")
    notice = WaitNotice(JudgementStore(output_dir, people.staleness), where).start()
    try:
        yield
    finally:
        notice.stop()
        if page is not None:
            page.stop()


def run_with_restarts(
    config: TrainConfig, output_dir: Path, resume: bool = False, stop: StopRequest | None = None
) -> list[dict]:
    """Train; when a learner dies (its node lost, OOM), rebuild everything from the newest checkpoint and go on,
    at most `scaleout.learner_max_restarts` times. Returns the rows of the epochs trained by this call."""
    rows: list[dict] = []
    for attempt in range(config.scaleout.learner_max_restarts + 1):
        trainer = Trainer(config, output_dir, resume=resume or attempt > 0, stop=stop)
        rows = [r for r in rows if r["epoch"] < trainer.start_epoch]
        try:
            return rows + trainer.run()
        except ray.exceptions.RayError as error:
            what = _learner_loss(error)
            if what is None:
                raise
            rows += trainer.rows
            if attempt == config.scaleout.learner_max_restarts:
                raise RuntimeError(
                    f"{what} {attempt + 1} time(s), the last: {_first_line(error)}; raise "
                    "scaleout.learner_max_restarts or check the learner nodes, then continue with --resume"
                ) from error
            checkpoint = trainer.out.latest_checkpoint()
            print(
                f"rlcm: {what} ({_first_line(error)}); rebuilding the learners from "
                f"{checkpoint.name if checkpoint else 'scratch (no checkpoint yet)'} "
                f"(restart {attempt + 1} of scaleout.learner_max_restarts={config.scaleout.learner_max_restarts})",
                file=sys.stderr,
                flush=True,
            )
        finally:
            trainer.shutdown()
    return rows


def _learner_loss(error: BaseException) -> str | None:
    """What a learner update lost: the learner itself, or its trajectories (lost with their node, not rebuilt by Ray),
    which the newest checkpoint's epoch samples again; None for any other error."""
    if isinstance(error, ray.exceptions.RayActorError):
        return "a learner died"
    if isinstance(error, ray.exceptions.ObjectLostError) or isinstance(
        getattr(error, "cause", None), ray.exceptions.ObjectLostError
    ):
        return "an update's trajectories were lost with their node"
    return None


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:200]
