"""The benchmark READMEs' results table, from a benchmark folder's study files: the
baselines and one-shot plans (from the first study's baselines.json / oneshot.json) and
every study's Pareto plans, each on the search and the report split. "✗" marks a plan
whose report-split number misses the study's target there (`metrics.report.meets_target`);
"(40 windows)" a plan reported on another protocol than the baselines.

    python scripts/bench_table.py results/benchmarks/smollm2-splits kld ppl-fp5 ppl-u4
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def windows(protocol: str | None) -> str:
    """'160 windows' from a protocol string ('' when it names none)."""
    found = re.search(r"(\d+) (windows|images)", protocol or "")
    return f"{found.group(1)} {found.group(2)}" if found else ""


def cells(m: dict, metric: str, mark: str | None, protocol: str | None = None) -> list[str]:
    """search, KL search, report, KL report, size, bits; "✗" after the report column
    of `mark` (the study's target metric) when the plan misses the target there; the
    report split's size when it differs from `protocol` (the baselines')."""
    report = m.get("report") or {}
    digits = {"ppl": 2, "kld": 4, "accuracy": 4}

    def fmt(x, d):
        return "—" if x is None else f"{x:.{d}f}"
    row = [fmt(m.get(metric), digits[metric]), fmt(m.get("kld"), 4),
           fmt(report.get(metric), digits[metric]), fmt(report.get("kld"), 4),
           fmt(m.get("size_mib"), 1), fmt(m.get("bits_per_weight"), 3)]
    if mark is not None and report.get("meets_target") is False:
        row[2 if mark == metric else 3] += " ✗"
    if protocol is not None and report.get("protocol") not in (None, protocol):
        row[2] += f" ({windows(report['protocol'])})"
        row[3] += f" ({windows(report['protocol'])})"
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path)
    ap.add_argument("studies", nargs="+")
    a = ap.parse_args()
    first = a.folder / a.studies[0]
    metric = json.loads((first / "study.json").read_text())["metric"]
    metric = "ppl" if metric == "kld" else metric     # the task's own metric leads
    print(f"| config | {metric} search | KL search | {metric} report | KL report | size MiB "
          "| bits/weight | plan |")
    print("|---|---|---|---|---|---|---|---|")
    baselines = json.loads((first / "baselines.json").read_text())
    protocol = (baselines.get("fp", {}).get("report") or {}).get("protocol")
    for label, m in baselines.items():
        print(f"| uniform {label} (reference) | " + " | ".join(cells(m, metric, None)) + " | |")
    for label, e in json.loads((first / "oneshot.json").read_text()).items():
        m = {**e["metrics"], "report": e.get("report")}
        print(f"| one-shot {label} | " + " | ".join(cells(m, metric, None)) + " | |")
    for name in a.studies:
        folder = a.folder / name
        pareto = json.loads((folder / "pareto.json").read_text())
        best = json.loads((folder / "best.json").read_text()).get("trial") \
            if (folder / "best.json").exists() else None
        for e in pareto["front"]:
            tag = " (best.json)" if e["number"] == best else ""
            print(f"| {name} trial {e['number']}{tag} | "
                  + " | ".join(cells(e["metrics"], metric, pareto["metric"], protocol))
                  + f" | `{name}/{e['plan']}` |")


if __name__ == "__main__":
    main()
