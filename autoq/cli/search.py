"""`autoq search`: the study, and what its best.json is, in words."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .. import progress
from ..errors import deprecated
from . import args
from .app import command, table
from .model import eval_settings
from .options import (BUDGET, MODEL_DATA, SPEED, STORAGE, STRATEGY, TARGET, Backend,
                      Checkpoint, Data, Device, Dtype, Json, Limit, Minimize, Model, Quiet,
                      Sampler, SeqLen, Task, TrialSpeed, target_option)


def _report_option(flag: str, metavar: str, shown: str, help: str):
    return typer.Option(None, flag, metavar=metavar, rich_help_panel=MODEL_DATA,
                        show_default=shown, help=help)


@command
def search(model: str = Model(), task: Optional[str] = Task, data: Optional[str] = Data,
           seq_len: Optional[int] = SeqLen, limit: Optional[int] = Limit,
           checkpoint: Optional[str] = Checkpoint,
           target_ppl: Optional[str] = target_option("--target-ppl", "perplexity at most X (> 1)"),
           target_acc: Optional[str] = target_option("--target-acc",
                                                     "top-1 accuracy at least X (0-1]"),
           target_kld: Optional[str] = target_option(
               "--target-kld", "mean KL divergence from the unquantized model at most X "
               "(nats per token / image)"),
           report_data: Optional[str] = _report_option(
               "--report-data", "PATH", "the task's report split",
               "The report split's data (e.g. wiki.test.raw): the front and best.json are "
               "scored on it in full at the end; --data is the search split."),
           report_limit: Optional[int] = _report_option(
               "--report-limit", "N", "all", "Use only the first N units of the report split."),
           report_front: Optional[int] = _report_option(
               "--report-front", "N", "all",
               "Score at most N Pareto configs on the report split (best.json first, "
               "the rest spread along the front)."),
           max_size_mib: Optional[float] = typer.Option(
               None, "--max-size-mib", metavar="MIB", rich_help_panel=TARGET,
               help="Require size <= MIB; with no quality target: the best quality at that "
               "size (budget mode)."),
           bits: Optional[float] = typer.Option(
               None, "--bits", metavar="B", rich_help_panel=TARGET,
               help="--max-size-mib for B bits per searched weight (scales and zeros "
               "included; the rest of the model as it is)."),
           minimize: str = Minimize,
           trials: int = typer.Option(50, "--trials", metavar="N", rich_help_panel=BUDGET,
                                      help="Total finished trials in the study (re-running resumes)."),
           timeout: Optional[float] = typer.Option(
               None, "--timeout", metavar="SEC", rich_help_panel=BUDGET, show_default="none",
               help="Stop starting trials after SEC seconds."),
           prior_trials: Optional[int] = typer.Option(
               None, "--prior-trials", metavar="N", rich_help_panel=BUDGET,
               show_default="trials/3, 2..10",
               help="First trials from the sensitivity prior (knapsack), before the sampler."),
           old_seeds: Optional[int] = typer.Option(None, "--seeds", hidden=True,
                                                   help="Deprecated: --prior-trials."),
           prune: bool = typer.Option(True, "--prune/--no-prune", metavar="",
                                      rich_help_panel=BUDGET,
                                      help="Stop scoring a trial once the data seen decides the "
                                      "target (Pareto configs are then scored in full)."),
           space: Optional[str] = typer.Option(
               None, "--space", metavar="FILE|NAME", rich_help_panel=STRATEGY,
               show_default="the model family's per-layer space",
               help="Search-space YAML or shipped name."),
           sampler: Optional[str] = Sampler,
           seed: int = typer.Option(0, "--seed", metavar="N", rich_help_panel=STRATEGY,
                                    help="Random seed of the samplers."),
           all_options: bool = typer.Option(False, "--all-options", metavar="",
                                            rich_help_panel=STRATEGY,
                                            help="With gemlite, also search options it cannot "
                                            "serve (those layers fall back to hqq)."),
           study: Optional[str] = typer.Option(None, "--study", metavar="NAME",
                                               rich_help_panel=STORAGE,
                                               show_default="model-task-target[-latency]",
                                               help="Study name."),
           storage: Optional[str] = typer.Option(None, "--storage", metavar="URL",
                                                 rich_help_panel=STORAGE,
                                                 show_default="sqlite:///<out>/<study>/study.db",
                                                 help="Optuna storage URL."),
           out: Path = typer.Option(Path("results"), "--out", metavar="DIR",
                                    rich_help_panel=STORAGE,
                                    help="Output root; the study folder is <out>/<study>."),
           cache_dir: Optional[str] = typer.Option(None, "--cache-dir", metavar="DIR",
                                                   rich_help_panel=STORAGE,
                                                   show_default="<out>/layer-cache",
                                                   help="On-disk layer cache."),
           trial_speed: str = TrialSpeed,
           old_speed: Optional[str] = typer.Option(None, "--speed", hidden=True,
                                                   help="Deprecated: --trial-speed."),
           measure_front: Optional[int] = typer.Option(
               None, "--measure-front", metavar="N", rich_help_panel=SPEED, show_default="all",
               help="Re-measure the speed of at most N Pareto configs (best first; 0: none, "
               "their speed stays predicted)."),
           one_shot: Optional[str] = typer.Option(
               None, "--one-shot", metavar="BITS,...|none", rich_help_panel=BUDGET,
               show_default="4,4.5,5,6; at a size budget: that budget",
               help="Budgets (bits per searched weight) of the one-shot plans measured "
               "beside the front (knapsack on the sensitivity and on the single-layer KL); "
               "none: skip them."),
           device: str = Device, dtype: str = Dtype, backend: str = Backend,
           as_json: bool = Json, quiet: bool = Quiet):
    """Search per-layer HQQ configs for the smallest (--minimize latency: fastest) model
    meeting a quality target (multi-objective Optuna), writing plans ready for `autoq apply`;
    with --target-ppl none / --target-acc none, map the whole trade-off."""
    trial_speed = old_speed or trial_speed
    prior_trials = prior_trials if prior_trials is not None else old_seeds
    inp = args.inputs(model, task, data, seq_len, limit, checkpoint, device, dtype, backend,
                      cache_dir)
    sized = args.size_budget(max_size_mib, bits)
    metric, target = args.search_target(inp.task["metric"], inp.task["name"], target_ppl,
                                        target_acc, target_kld, sized)
    report_data = args.report_inputs(inp.task, report_data, report_limit)
    args.search_budget(trials, timeout, prior_trials, measure_front, report_front)
    args.search_setup(space, storage, out, sampler, trial_speed, minimize,
                      budget_mode=sized and target is None)
    budgets = None if one_shot is None else args.one_shot(one_shot)
    for old, new, given in (("--speed", "--trial-speed", old_speed),
                            ("--seeds", "--prior-trials", old_seeds)):
        if given is not None:  # said once the arguments are known to be good
            deprecated(old, new)
    import optuna

    from ..search.run import SearchSettings
    from ..search.run import search as run_search

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = SearchSettings(
        eval=eval_settings(inp, task, seq_len, limit, device, dtype,
                           cache_dir or str(out / "layer-cache"), backend, report_data,
                           report_limit),
        target=target, metric=metric, trials=trials, max_size_mib=max_size_mib, bits=bits,
        timeout=timeout, space=space, study=study, storage=storage, out=str(out), seed=seed,
        prior_trials=prior_trials, trial_speed=trial_speed, minimize=minimize, prune=prune,
        sampler=sampler, measure_front=measure_front, report_front=report_front,
        all_options=all_options,
        model_as_typed=model, one_shot=budgets)
    result = run_search(settings, say=progress.say if progress.ENABLED else lambda m: None)
    if as_json:
        typer.echo(json.dumps({"study": result.study_dir.name, "study_dir": str(result.study_dir),
                               "metric": settings.metric, "target": target,
                               "objective": minimize, "max_size_mib": result.budget_mib,
                               "finished": result.finished, "front": result.front,
                               "best": result.best, "best_note": best_note(result, settings)}))
        return
    table(f"autoq search: {result.study_dir.name}",
           {"study folder": str(result.study_dir), "finished trials": result.finished,
            "pareto configs": len(result.front), "best.json": best_note(result, settings)})


def best_note(result, settings) -> str:
    """What best.json is, in words (there is none without a target)."""
    if settings.target is None and not settings.budget_mode:
        return (f"none: no quality target (--target-{'ppl' if settings.metric == 'ppl' else 'acc'}"
                " none), so no config is best; pick one from the Pareto front (pareto.json)")
    if not result.best:
        return "none: no finished trial " + ("fits the budget" if settings.budget_mode
                                              else "meets the target") + " yet"
    m, metric = result.best["metrics"], settings.metric
    fast = f", {m['latency_ms']:.3g} ms predicted" if settings.minimize == "latency" else ""
    note = (f"{metric} {m[metric]:.4g}, {m['size_mib']:.1f} MiB, "
            f"{m['bits_per_weight']:.2f} bits/weight{fast} (search split)")
    rep = m.get("report")
    if settings.budget_mode:
        note = f"the best {metric} at <= {result.budget_mib:.4g} MiB: " + note
        return note + (f"; report split: {metric} {rep[metric]:.4g}" if rep and metric in rep
                       else "")
    if rep and metric in rep:
        verdict = "meets" if rep.get("meets_target") else "misses"
        there = f" there ({rep['target']:.4g}: the same loss against fp)" \
            if isinstance(rep.get("target"), float) and rep["target"] != settings.target else ""
        note += f"; report split: {metric} {rep[metric]:.4g}, {verdict} the target{there}"
    return note
