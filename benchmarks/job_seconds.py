"""Per-rule job-seconds of a finished run, from the `benchmark:` files Snakemake wrote (benchmarks/<rule>/*.tsv).

    .venv/bin/python benchmarks/job_seconds.py                    # this run dir
    .venv/bin/python benchmarks/job_seconds.py RUN_DIR --base BASE_RUN_DIR

Prints, per rule: jobs, job-seconds (the sum of each job's wall seconds), the largest job and the peak RSS; with
--base, the same for the base run and the ratio base / run per rule and in total. Job-seconds, not wall time, are
what a change to one stage moves: the wall time of a 2-core run is about job-seconds / 2 plus the idle tail.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def rule_table(run_dir: Path) -> dict[str, dict[str, float]]:
    """{rule: {jobs, seconds, largest, max_rss_mb}} from run_dir/benchmarks/<rule>/*.tsv."""
    table: dict[str, dict[str, float]] = {}
    for tsv in sorted((run_dir / "benchmarks").glob("*/*.tsv")):
        with tsv.open(newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        if not rows:
            raise ValueError(f"{tsv}: no benchmark row")
        row = rows[-1]  # Snakemake appends one row per repeat; the default is one
        entry = table.setdefault(tsv.parent.name, {"jobs": 0, "seconds": 0.0, "largest": 0.0, "max_rss_mb": 0.0})
        seconds = float(row["s"])
        rss = float(row["max_rss"]) if row.get("max_rss", "NA") not in ("NA", "-", "") else 0.0
        entry["jobs"] += 1
        entry["seconds"] += seconds
        entry["largest"] = max(entry["largest"], seconds)
        entry["max_rss_mb"] = max(entry["max_rss_mb"], rss)
    if not table:
        raise ValueError(f"{run_dir / 'benchmarks'}: no benchmark files (run the workflow there first)")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?", default=".")
    parser.add_argument("--base", help="a run dir to compare with (its per-rule job-seconds and the ratio)")
    args = parser.parse_args()
    run = rule_table(Path(args.run_dir))
    base = rule_table(Path(args.base)) if args.base else {}
    rules = sorted(
        set(run) | set(base), key=lambda r: -max(run.get(r, {}).get("seconds", 0), base.get(r, {}).get("seconds", 0))
    )
    header = f"{'rule':<22}{'jobs':>5}{'job-s':>9}{'largest':>9}{'RSS MB':>8}"
    if base:
        header += f"{'base jobs':>11}{'base job-s':>12}{'base/run':>10}"
    print(header)
    for rule in rules:
        mine, theirs = run.get(rule), base.get(rule)
        line = f"{rule:<22}"
        line += (
            f"{mine['jobs']:>5}{mine['seconds']:>9.0f}{mine['largest']:>9.0f}{mine['max_rss_mb']:>8.0f}"
            if mine
            else f"{'-':>5}{'-':>9}{'-':>9}{'-':>8}"
        )
        if base:
            line += f"{theirs['jobs']:>11}{theirs['seconds']:>12.0f}" if theirs else f"{'-':>11}{'-':>12}"
            line += f"{theirs['seconds'] / mine['seconds']:>10.2f}" if mine and theirs else f"{'-':>10}"
        print(line)
    total = sum(e["seconds"] for e in run.values())
    jobs = sum(e["jobs"] for e in run.values())
    summary = f"{'total':<22}{jobs:>5}{total:>9.0f}"
    if base:
        base_total = sum(e["seconds"] for e in base.values())
        summary += f"{'':>17}{sum(e['jobs'] for e in base.values()):>11}{base_total:>12.0f}{base_total / total:>10.2f}"
    print(summary)


if __name__ == "__main__":
    main()
