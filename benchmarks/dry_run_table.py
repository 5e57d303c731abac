"""The dry-run table of docs/results/dry-runs.md, from the logs of scripts/dry_run_all.sh (one log per preset).

    python benchmarks/dry_run_table.py LOG_DIR RESOLUTION [OUT]

Rows of presets with no log in LOG_DIR are kept from OUT, so a run of a few presets updates only their rows."""

from __future__ import annotations

import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "docs" / "results" / "dry-runs.md"
HEADER = [
    "| preset | time | peak memory per actor (RSS high-water mark) | all processes incl. Ray's own (sampled) "
    "| result |",
    "|---|---|---|---|---|",
]


def row(text: str, preset: str) -> str:
    """One table row from the output of `rlcm train --config PRESET --dry-run`."""
    ok = "dry run OK:" in text
    total = re.search(r"total time ([\d.]+) s", text)
    peaks = dict(re.findall(r"peak memory ([\w ()]+?): ([\d.]+ GB)", text))
    together = peaks.pop("all processes together", "")
    actors = "; ".join(f"{k} {v}" for k, v in sorted(peaks.items()))
    lines = reversed(text.splitlines())
    error = "" if ok else next((line for line in lines if line.startswith("rlcm: error")), "failed")[:160]
    result = "OK" if ok else "FAILED: " + error
    return f"| {preset} | {total.group(1) + ' s' if total else ''} | {actors} | {together} | {result} |"


def rows_from_logs(log_dir: str | Path) -> list[str]:
    """One row per `<preset>.log` in `log_dir`, sorted by preset."""
    return [row(log.read_text(), log.stem) for log in sorted(Path(log_dir).glob("*.log"))]


def table(rows: list[str], resolution: str) -> str:
    intro = f"Dry runs at {resolution} px (`bash scripts/dry_run_all.sh`):"
    return "\n".join([intro, "", *HEADER, *rows]) + "\n"


def main(log_dir: str, resolution: str, out: str = str(OUT)) -> None:
    path = Path(out)
    kept = path.read_text().splitlines() if path.is_file() else []
    rows = {line.split("|")[1].strip(): line for line in kept if line.startswith("| ") and line not in HEADER}
    new = rows_from_logs(log_dir)
    rows |= {line.split("|")[1].strip(): line for line in new}
    path.write_text(table([rows[name] for name in sorted(rows)], resolution))
    print(f"wrote {len(new)} row(s) of the dry-run table into {path}")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        raise SystemExit("usage: python benchmarks/dry_run_table.py LOG_DIR RESOLUTION [OUT]")
    main(*sys.argv[1:])
