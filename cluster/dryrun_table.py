"""Rewrite the dry-run table in README.md from the logs of scripts/dry_run_all.sh (one log per preset)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

START, END = "<!-- dry-run-table:start -->", "<!-- dry-run-table:end -->"


def row(log: Path) -> str:
    text = log.read_text()
    ok = "dry run OK:" in text
    total = re.search(r"total time ([\d.]+) s", text)
    peaks = dict(re.findall(r"peak memory ([\w ()]+?): ([\d.]+ GB)", text))
    together = peaks.pop("all processes together", "")
    actors = "; ".join(f"{k} {v}" for k, v in sorted(peaks.items()))
    error = "" if ok else next((line for line in reversed(text.splitlines()) if line.startswith("rlcm: error")), "failed")[:160]
    return f"| {log.stem} | {total.group(1) + ' s' if total else ''} | {actors} | {together} | {'OK' if ok else 'FAILED: ' + error} |"


def table(logs: Path, resolution: str) -> str:
    lines = [f"Dry runs at {resolution} px (CPU, 2 cores, shared machine; `bash scripts/dry_run_all.sh`):", "",
             "| preset | time | peak memory per actor (RSS high-water mark) | all processes incl. Ray's own (sampled) | result |", "|---|---|---|---|---|"]
    return "\n".join(lines + [row(log) for log in sorted(logs.glob("*.log"))])


def main(logs: str, resolution: str, readme: str) -> None:
    path = Path(readme)
    text = path.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme} has no {START} ... {END} block")
    head, rest = text.split(START, 1)
    path.write_text(head + START + "\n" + table(Path(logs), resolution) + "\n" + END + rest.split(END, 1)[1])
    print(f"wrote the dry-run table into {readme}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
