"""The latency model against measurement, on a study's Pareto front (issue 23).

    python scripts/latency_check.py STUDY_DIR [--out FILE.json]

Every front plan of a finished `autoq search` has its speed re-measured on the serving
backend (`tokens_per_s`, "speed_source": "measured") beside what the latency model
predicted for it (`tokens_per_s_predicted`). Prints and writes: per plan both numbers and
the relative error, the mean absolute error (goal: at most 15%), and, for a
`--minimize latency` study, whether the measured speeds keep the predicted order (every
pair of front plans ordered the same way by both, within the measurement's own noise).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

GOAL_MAE = 0.15


def check(study_dir: Path) -> dict:
    pareto = json.loads((study_dir / "pareto.json").read_text())
    study = json.loads((study_dir / "study.json").read_text())
    key = study.get("speed_key", "tokens_per_s")
    rows = []
    for entry in pareto["front"]:
        m = entry["metrics"]
        measured, predicted = m.get(key), m.get(f"{key}_predicted")
        if m.get("speed_source") != "measured" or not measured or not predicted:
            continue
        rows.append({"plan": entry["plan"], "trial": entry["number"],
                     "latency_ms_predicted": m.get("latency_ms"), "measured": measured,
                     "predicted": predicted, "error": (predicted - measured) / measured,
                     "size_mib": m.get("size_mib"), study["metric"]: m.get(study["metric"])})
    if not rows:
        raise SystemExit(f"{study_dir}: no front plan with both a measured and a predicted "
                         "speed (run the search with --trial-speed predicted)")
    mae = sum(abs(r["error"]) for r in rows) / len(rows)
    by_prediction = sorted(rows, key=lambda r: -r["predicted"])
    swaps = [(a["plan"], b["plan"]) for i, a in enumerate(by_prediction)
             for b in by_prediction[i + 1:] if a["measured"] < b["measured"]]
    return {"study": str(study_dir), "objective": study.get("objective", "size"),
            "speed_key": key, "plans": rows, "mean_abs_error": mae,
            "goal_mean_abs_error": GOAL_MAE, "meets": mae <= GOAL_MAE,
            "order_kept": not swaps, "pairs_out_of_order": swaps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study", type=Path)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    result = check(a.study)
    for r in result["plans"]:
        print(f"{r['plan']}: measured {r['measured']:.1f}, predicted {r['predicted']:.1f} "
              f"({r['error']:+.1%})")
    print(f"mean absolute error {result['mean_abs_error']:.1%} (goal <= {GOAL_MAE:.0%}); "
          f"predicted order kept: {result['order_kept']}")
    if a.out:
        a.out.write_text(json.dumps(result, indent=1) + "\n")
    sys.exit(0)


if __name__ == "__main__":
    main()
