"""The GPU check's figures and goals, from the parts' saved states, and plans.md
(scripts/gpu_check.py writes them into summary.json).

Each goal is met or missed with its number and, when missed, what limits it; or not
measured, with why (a part over budget, killed, failed, or another backend serving).
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # scripts/: the check's files
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check_common import (AUTOTUNE_GEMM_SHAPES, AUTOTUNE_GEMV_SHAPES,  # noqa: E402
                              BPW_LIMIT, GOALS, MIXED, TOLERANCE_FLOORS)


def not_measured(goal: str, why: str) -> dict:
    return {"goal": goal, "met": None, "measured": None, "why": why}


def part_why(states: dict, part: str) -> str:
    s = states.get(part, {})
    status = s.get("status", "not run")
    if status == "done":
        return f"the {part} part did not measure it (see its failed/skipped steps)"
    during = s.get("stopped_during")
    return f"the {part} part is {status}" + (f" (during {during!r})" if during else "") + \
        (f": {s['error']}" if s.get("error") else "")


def lm_figures(states: dict) -> tuple[dict, dict]:
    lm = states.get("lm", {})
    rows = lm.get("rows", [])
    backend = lm.get("info", {}).get("backend")
    floor = lm.get("floor", {})
    bw = lm.get("copy_gb_per_s")
    figures: dict = {"lm_backend": backend, "copy_gb_per_s": bw}
    goals: dict = {}
    g_tok = f">= {GOALS['tokens_per_s']:g} tokens/s, batch 1, the <= {BPW_LIMIT} bits/weight plan"
    g_speed = f">= {GOALS['speedup']:g}x fp16, same engine, same run"
    g_lat = f"latency model within {GOALS['latency_error']:.0%} on every LM plan"
    g_match = ("gemlite's logits match HQQ's reference forward within the fp16 tolerance "
               f"({TOLERANCE_FLOORS:g}x the measured fp16 rounding floor) on every gemlite plan")
    # the goal pair: the mixed plan on the serving backend and fp16, with the same engine
    pairs = []
    for q in (r for r in rows if r["plan"] == MIXED and r["backend"] == backend):
        fp = next((r for r in rows if not r["quantized"]
                   and r["speed_engine"] == q["speed_engine"]), None)
        if fp is not None:
            pairs.append((q, fp))
    if pairs:
        q, fp = max(pairs, key=lambda p: p[0]["tokens_per_s"])
        pm = q["predicted_ms"]
        ms = 1e3 / q["tokens_per_s"]
        speedup = q["tokens_per_s"] / fp["tokens_per_s"]
        figures.update(fp16_tokens_per_s=fp["tokens_per_s"], quantized_plan=q["plan"],
                       quantized_tokens_per_s=q["tokens_per_s"],
                       quantized_bits_per_weight=q["bits_per_weight"], speedup_vs_fp16=speedup,
                       engine=q["speed_engine"], quantized_read_gb_per_s=q["read_gb_per_s"])
        roof = f"; its {q['read_mib']:.0f} MiB of weights at the measured copy bandwidth " \
               f"({bw:.0f} GB/s) would take {q['read_mib'] * 2**20 / (bw * 1e9) * 1e3:.3f} ms" \
            if bw else ""
        parts = {"rest (attention, norms, embedding, argmax, gaps between kernels)": pm["rest"],
                 "linear layers other than lm_head": pm["linears"] - pm["lm_head"],
                 "lm_head": pm["lm_head"]}
        top = max(parts, key=parts.get)
        limit = (f"{ms:.3f} ms per token; the latency model splits it into rest {pm['rest']:.3f} "
                 f"ms + linear layers {pm['linears']:.3f} ms (lm_head {pm['lm_head']:.3f} ms)"
                 f"{roof}: the largest term is {top}")
        ok_bits = q["bits_per_weight"] <= BPW_LIMIT + 1e-9
        met = q["tokens_per_s"] >= GOALS["tokens_per_s"] and ok_bits
        goals["decode_tokens_per_s"] = {
            "goal": g_tok, "met": met, "measured": q["tokens_per_s"], "plan": q["plan"],
            "bits_per_weight": q["bits_per_weight"], "engine": q["speed_engine"]}
        if not met:
            goals["decode_tokens_per_s"]["limited_by"] = limit if ok_bits else \
                f"the plan has {q['bits_per_weight']:.3f} bits/weight, over {BPW_LIMIT}"
        fp_ms = 1e3 / fp["tokens_per_s"]
        bound = fp_ms / (pm["rest"] + pm["linears"]) if pm["linears"] > 0 else None
        goals["speedup_vs_fp16"] = {
            "goal": g_speed, "met": speedup >= GOALS["speedup"], "measured": speedup,
            "fp16_tokens_per_s": fp["tokens_per_s"], "engine": q["speed_engine"]}
        if speedup < GOALS["speedup"]:
            goals["speedup_vs_fp16"]["limited_by"] = (
                f"fp16 {fp_ms:.3f} ms vs {ms:.3f} ms per token; the quantized model reads "
                f"{fp['read_mib'] / q['read_mib']:.2f}x fewer bytes, but the rest term "
                f"({pm['rest']:.3f} ms: attention, norms, launch gaps) does not shrink with the "
                f"weights and the linear kernels take {pm['linears']:.3f} ms"
                + (f"; with this rest term no weight format gets past "
                   f"{fp_ms / pm['rest']:.2f}x" if pm["rest"] > 0 else ""))
        figures["latency_model_predicted_speedup"] = bound
    else:
        why = part_why(states, "lm") if states.get("lm", {}).get("status") != "done" or \
            not rows else "no fp16 and mixed-plan rows with the same engine"
        goals["decode_tokens_per_s"] = not_measured(g_tok, why)
        goals["speedup_vs_fp16"] = not_measured(g_speed, why)
    errs = [r for r in rows if "predicted_error" in r]
    if errs:
        worst = max(errs, key=lambda r: r["predicted_error"])
        met = worst["predicted_error"] <= GOALS["latency_error"]
        goals["latency_model_error"] = {
            "goal": g_lat, "met": met, "measured": worst["predicted_error"],
            "worst": f"{worst['plan']} / {worst['backend']} / {worst['speed_engine']}",
            "plans": len(errs), "complete": states.get("lm", {}).get("status") == "done"}
        if not met:
            pm = worst["predicted_ms"]
            mismatch = [r for r in errs if r.get("speed_engine_fallback")]
            goals["latency_model_error"]["limited_by"] = (
                f"{worst['plan']}: predicted {worst['predicted_tokens_per_s']:.1f}, measured "
                f"{worst['tokens_per_s']:.1f} tokens/s (rest {pm['rest']:.3f} ms measured once on "
                f"fp16, layers {pm['linears']:.3f} ms timed one by one in mode "
                f"{worst['latency_mode']!r} with the engine {worst['speed_engine']!r})"
                + (f"; engines fell back on {len(mismatch)} rows, so layers and decode were "
                   "timed differently" if mismatch else ""))
        figures["latency_worst_error"] = worst["predicted_error"]
    else:
        goals["latency_model_error"] = not_measured(g_lat, part_why(states, "lm"))
    served = [r for r in rows if r["backend"] == "gemlite" and "served_max_abs_diff" in r]
    tol = floor.get("tolerance")
    if served and tol is not None:
        worst = max(served, key=lambda r: r["served_max_abs_diff"])
        met = all(r["served_max_abs_diff"] <= tol for r in served)
        goals["gemlite_matches_hqq"] = {
            "goal": g_match, "met": met, "measured": worst["served_max_abs_diff"],
            "worst": worst["plan"], "tolerance": tol, "fp16_floor": floor.get("max_abs_diff"),
            "logit_max_abs": floor.get("logit_max_abs"), "plans": len(served)}
        if not met:
            goals["gemlite_matches_hqq"]["limited_by"] = (
                f"{worst['plan']}: max |gemlite - hqq| {worst['served_max_abs_diff']:.4g} > "
                f"{tol:.4g} ({TOLERANCE_FLOORS:g} x floor {floor.get('max_abs_diff'):.3g}); top-1 "
                f"agreement {worst.get('served_top1_agreement', float('nan')):.2%}")
    else:
        why = f"the serving backend is {backend} (gemlite needs CUDA and the gemlite package)" \
            if backend and backend != "gemlite" else part_why(states, "lm")
        goals["gemlite_matches_hqq"] = not_measured(g_match, why)
    return figures, goals


def search_figures(states: dict) -> tuple[dict, dict]:
    s = states.get("search", {})
    srch = s.get("search", {})
    info = s.get("info", {})
    goal = f"100 trials extrapolate to <= {GOALS['search_minutes']:g} min, sensitivity included"
    calls = srch.get("calls", [])
    trials = [t for t in srch.get("trials", []) if t["state"] in ("COMPLETE", "PRUNED")
              and t["seconds"] is not None]
    fig = {"search_trials_finished": len(trials)}
    if not calls or not trials:
        return fig, {"search_100_trials": not_measured(goal, part_why(states, "search"))}
    first_call = calls[0]
    trials.sort(key=lambda t: t["start"])
    in_first = [t for t in trials if t["start"] <= (first_call["end"] or math.inf)]
    setup = trials[0]["start"] - first_call["start"]
    first = trials[0]["seconds"]
    later = [t["seconds"] for t in trials[1:]]
    per = statistics.mean(later) if later else first
    finalize = None
    if first_call["end"] and not first_call["interrupted"] and in_first:
        last = max(t["start"] + t["seconds"] for t in in_first)
        finalize = first_call["end"] - last
    messages = srch.get("messages", [])
    base = [t for t, m in messages if m.startswith("baseline")]
    load = base[0] if base else None
    baselines = (base[-1] - base[0]) if len(base) > 1 else None
    total = setup + first + 99 * per + (finalize or 0.0)
    fig.update(search_setup_s=setup, search_load_s=load, search_baselines_s=baselines,
               search_sensitivity_s=srch.get("sensitivity_seconds"),
               search_first_trial_s=first, search_seconds_per_trial=per,
               search_seconds_per_trial_median=statistics.median(later) if later else first,
               search_scoring_s_per_trial=statistics.mean(
                   [t["eval_seconds"] for t in trials if t["eval_seconds"] is not None] or [0.0]),
               search_finalize_s=finalize, search_100_trials_minutes=total / 60)
    autotune = s.get("autotune_probe") or {}
    extra = None
    if info.get("gemlite_autotune") not in (None, "fast") and "gemv_m1" in autotune:
        # what a fresh process with gemlite's own setting ('fast') tunes first: the 5
        # servable options x 4 decoder shapes scored (GEMM), x 5 shapes timed (GEMV)
        gemm = next((v for k, v in autotune.items() if k.startswith("gemm")), {})
        extra = AUTOTUNE_GEMM_SHAPES * gemm.get("autotune_s", 0.0) + \
            AUTOTUNE_GEMV_SHAPES * autotune["gemv_m1"]["autotune_s"]
        fig["search_autotune_estimate_s"] = extra
        fig["search_autotune_note"] = (
            f"the search ran with gemlite autotune {info.get('gemlite_autotune')!r}; with its "
            f"default ('fast') a fresh process first tunes ~{AUTOTUNE_GEMM_SHAPES} GEMM and "
            f"~{AUTOTUNE_GEMV_SHAPES} GEMV kernel shapes (probed cost per shape x count)")
    minutes = (total + (extra or 0.0)) / 60
    g = {"goal": goal, "met": minutes <= GOALS["search_minutes"], "measured": minutes,
         "trials_measured": len(trials), "complete": s.get("status") == "done",
         "formula": "setup (load, baselines, sensitivity, prior) + first trial (builds the "
                    "latency model) + 99 x mean later trial + finalize"
                    + (" + gemlite autotune estimate" if extra else "")}
    if len(trials) < 10:
        g["note"] = f"only {len(trials)} trials were measured (10 were asked for)"
    if not g["met"]:
        terms = {"setup": setup, "first trial": first, "99 later trials": 99 * per,
                 "finalize": finalize or 0.0, "gemlite autotuning": extra or 0.0}
        top = max(terms, key=terms.get)
        g["limited_by"] = (f"{top} ({terms[top] / 60:.1f} min); a trial takes {per:.1f} s, of "
                           f"which scoring {fig['search_scoring_s_per_trial']:.1f} s (the rest: "
                           "swapping cached layers in, gemlite conversion, bookkeeping)")
    return fig, {"search_100_trials": g}


def vit_figures(states: dict) -> dict:
    rows = states.get("vit", {}).get("rows", [])
    fp = next((r for r in rows if not r["quantized"]), None)
    if fp is None:
        return {}
    return {k.replace("images_per_s", "deit_images_per_s"): v for k, v in fp.items()
            if k.startswith("images_per_s")}


def fmt(x, spec: str = ".1f") -> str:
    return "" if x is None else format(x, spec)


def markdown(summary: dict) -> str:
    head = ("| model | plan | backend | engine | bits/weight | size MiB | speed (/s) | GB/s "
            "(read) | predicted (/s) | error | served max abs diff | gemlite / fallback layers |\n"
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
    lines = []
    for r in summary["lm"].get("rows") or []:
        lines.append(
            f"| {r['model']} | {r['plan']} | {r['backend']} | {r['speed_engine']} | "
            f"{r['bits_per_weight']:.3f} | {r['size_mib']:.1f} | {r['tokens_per_s']:.1f} tok | "
            f"{r['read_gb_per_s']:.0f} | {r['predicted_tokens_per_s']:.1f} | "
            f"{100 * r['predicted_error']:.1f}% | {fmt(r.get('served_max_abs_diff'), '.3g')} | "
            f"{r['served_layers']} / {r['fallback_layers']} |")
    for r in summary["vit"].get("rows") or []:
        sp = " / ".join(f"{v:.1f} img@b{k.removeprefix('images_per_s_b')}" for k, v in r.items()
                        if k.startswith("images_per_s_b"))
        lines.append(
            f"| {r['model']} | {r['plan']} | {r['backend']} | eager | {r['bits_per_weight']:.3f} "
            f"| {r['size_mib']:.1f} | {sp} | | {r['predicted_images_per_s']:.1f} (b1) | "
            f"{100 * r['predicted_error']:.1f}% | {fmt(r.get('served_max_abs_diff'), '.3g')} | "
            f"{r['served_layers']} / {r['fallback_layers']} |")
    device = summary.get("device") or "unknown device"
    what = "tiny configs (a CPU smoke test, not a measurement)" if summary["tiny"] else \
        "random weights (speed and size only)"
    note = f"\n{device}; {what}.\n"
    return head + "\n".join(lines) + "\n" + note


def goal_lines(summary: dict) -> list[str]:
    out = []
    for key, g in summary["goals"].items():
        met = {True: "met", False: "MISSED", None: "not measured"}[g["met"]]
        measured = g.get("measured")
        extra = g.get("limited_by") or g.get("why") or ""
        out.append(f"  {key}: {met}" + (f" ({measured:.4g})" if measured is not None else "")
                   + (f" - {extra}" if extra else ""))
    return out
