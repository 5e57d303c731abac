"""Write rows of the dry-run table in README.md from the logs of scripts/dry_run_all.sh (one log per preset).

Rows of presets without a log here are kept, so a run of a few presets updates only their rows."""

from __future__ import annotations

import re
import sys
from pathlib import Path

START, END = "<!-- dry-run-table:start -->", "<!-- dry-run-table:end -->"
HEADER = [
    "| preset | time | peak memory per actor (RSS high-water mark) | all processes incl. Ray's own (sampled) | result |",
    "|---|---|---|---|---|",
]


def row(log: Path) -> str:
    text = log.read_text()
    ok = "dry run OK:" in text
    total = re.search(r"total time ([\d.]+) s", text)
    peaks = dict(re.findall(r"peak memory ([\w ()]+?): ([\d.]+ GB)", text))
    together = peaks.pop("all processes together", "")
    actors = "; ".join(f"{k} {v}" for k, v in sorted(peaks.items()))
    error = (
        ""
        if ok
        else next((line for line in reversed(text.splitlines()) if line.startswith("rlcm: error")), "failed")[:160]
    )
    return f"| {log.stem} | {total.group(1) + ' s' if total else ''} | {actors} | {together} | {'OK' if ok else 'FAILED: ' + error} |"


def existing_rows(block: str) -> dict[str, str]:
    """{preset: row} of the table already in the README block."""
    return {
        line.split("|")[1].strip(): line for line in block.splitlines() if line.startswith("| ") and line not in HEADER
    }


def table(rows: dict[str, str], resolution: str) -> str:
    lines = [f"Dry runs at {resolution} px (CPU, 2 cores, shared machine; `bash scripts/dry_run_all.sh`):", "", *HEADER]
    return "\n".join(lines + [rows[name] for name in sorted(rows)])


def main(logs: str, resolution: str, readme: str, *presets: str) -> None:
    """Rewrite the rows of `presets` (all logs in `logs` when none are named) and keep the others."""
    path = Path(readme)
    text = path.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme} has no {START} ... {END} block")
    head, rest = text.split(START, 1)
    block, tail = rest.split(END, 1)
    files = [Path(logs) / f"{name}.log" for name in presets] if presets else sorted(Path(logs).glob("*.log"))
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise SystemExit(f"no dry-run log {', '.join(missing)}: run scripts/dry_run_all.sh for those presets first")
    rows = existing_rows(block) | {f.stem: row(f) for f in files}
    path.write_text(head + START + "\n" + table(rows, resolution) + "\n" + END + tail)
    print(f"wrote {len(files)} row(s) of the dry-run table into {readme}")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        raise SystemExit("usage: python -m cluster.dryrun_table LOG_DIR RESOLUTION README.md [PRESET ...]")
    main(*sys.argv[1:])
