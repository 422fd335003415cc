"""Trial cost of `autoq search` against the naive way, on the same plans.

autoq: the wall time of each finished trial as recorded in the study storage
(layer swap from the cache, scoring until the target is decided), plus the
time spent scoring partly scored Pareto configs on all the data at the end,
spread over the finished trials. Naive: for a sample of
the same trials' plans, quantize the whole model from scratch (fresh cache, no
disk cache) and evaluate on the full protocol — timed here, in this process, on
this machine. Writes trial-cost.json into the study folder.

    python scripts/trial_cost.py results/benchmarks/smollm2-wikitext2/ppl30 --sample 3
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path

import optuna
import torch

from autoq.pipeline.evaluator import EvalSettings, Evaluator
from autoq.io import write_json
from autoq.plan import Plan
from autoq.quant.cache import LayerCache


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("study_dir")
    ap.add_argument("--sample", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    folder = Path(a.study_dir)
    info = json.loads((folder / "study.json").read_text())
    study = optuna.load_study(study_name=info["study"], storage=info["storage"])
    finished = [t for t in study.get_trials(deepcopy=False)
                if t.state.is_finished() and t.datetime_complete and t.state.name != "FAIL"]
    trial_s = [(t.datetime_complete - t.datetime_start).total_seconds() for t in finished]
    settings = EvalSettings(**{**info["settings"], "cache_dir": None})
    ev = Evaluator(settings)
    complete = [t for t in finished if t.state.name == "COMPLETE" and "duplicate_of" not in t.user_attrs]
    sample = random.Random(a.seed).sample(complete, min(a.sample, len(complete)))
    naive = []
    for t in sample:
        plan = Plan.from_json({"format": "autoq.plan/1", "model": info["model"],
                               "layers": t.user_attrs["layers"]})
        resolved = ev.resolve(plan)
        ev.apply({n: None for n in ev.shapes})          # back to the fp model
        ev.cache = LayerCache()                          # nothing cached: the naive way
        t0 = time.perf_counter()
        metrics = ev.run(resolved, speed=False)
        naive.append({"trial": t.number, "seconds": time.perf_counter() - t0,
                      "scoring_seconds": metrics["eval_seconds"],
                      "quantized_pairs": len(ev.cache.quantized), info["metric"]: metrics[info["metric"]]})
        print(f"trial {t.number}: naive {naive[-1]['seconds']:.1f} s")
    rescored = study.user_attrs.get("rescored", {})
    rescore_s = sum(e["metrics"].get("rescore_seconds", 0.0) for e in rescored.values())
    mean_trial = (sum(trial_s) + rescore_s) / len(trial_s)
    mean_naive = statistics.mean(n["seconds"] for n in naive)
    result = {
        "study": info["study"], "finished_trials": len(trial_s),
        "pruned_trials": sum(t.state.name == "PRUNED" for t in finished),
        "duplicate_trials": sum("duplicate_of" in t.user_attrs for t in finished),
        "autoq_mean_trial_seconds": mean_trial,
        "trial_seconds_total": sum(trial_s), "front_rescore_seconds_total": rescore_s,
        "front_rescored": len(rescored),
        "mean_fraction_scored": statistics.mean(
            t.user_attrs.get("metrics", {}).get("fraction", 1.0) for t in finished
            if "duplicate_of" not in t.user_attrs),
        "autoq_median_trial_seconds": statistics.median(trial_s),
        "naive_mean_seconds": mean_naive, "naive_runs": naive,
        "ratio_mean": mean_trial / mean_naive,
        "note": "naive = quantize every planned layer from scratch + full evaluation, same plans, "
                "same process; autoq = (recorded wall time of the finished trials + the final "
                "full scoring of partly scored Pareto configs) / finished trials (cache reuse, "
                "early stopping, duplicate detection). Model loading excluded from both.",
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
        "command": f"python scripts/trial_cost.py {a.study_dir} --sample {a.sample}",
    }
    write_json(folder / "trial-cost.json", result)
    print(json.dumps({k: v for k, v in result.items() if k != "naive_runs"}, indent=1))


if __name__ == "__main__":
    main()
