"""autoq command line: one function per command; the docstring is the help.

Each command checks every argument first (`autoq.args`: one sentence, exit code 2,
before torch or a model is imported), then calls the library and prints.
"""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from . import __version__, args, progress
from .errors import UserError
from .options import (BUDGET, DEFAULT_MODEL, MODEL_DATA, OUTPUT, QUANT, SPEED, STORAGE,
                      STRATEGY, TARGET, Backend, CacheDir, Checkpoint, Command, Data, Device,
                      Dtype, Json, Limit, Model, OneLineErrors, Quiet, SeqLen, Task, one_of,
                      Minimize, Sampler, TrialSpeed, target_option)

app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Find, apply and compare per-layer mixed-precision HQQ quantization.")


def show_version(value: bool) -> None:
    if value:
        typer.echo(f"autoq {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(version: bool = typer.Option(False, "--version", metavar="", is_eager=True,
                                              callback=show_version,
                                              help="Print the version and exit.")):
    """Find, apply and compare per-layer mixed-precision HQQ quantization."""


def command(fn):
    """Register `fn` as a command; a UserError becomes one sentence and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*a, **kwargs):
        progress.ENABLED = not kwargs.get("quiet", False) and not kwargs.get("as_json", False)
        progress.quiet_libraries(not progress.ENABLED)
        try:
            return fn(*a, **kwargs)
        except UserError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2)
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130)
    return app.command(cls=Command)(wrapper)


def _table(title: str, rows: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    for key, value in rows.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(table)


def _emit(as_json: bool, title: str, result: dict) -> None:
    if as_json:
        typer.echo(json.dumps(result))
    else:
        _table(title, result)


@command
def models(as_json: bool = Json, quiet: bool = Quiet):
    """List the model registry and what each model needs."""
    from .models import MODELS

    rows = [{"name": e.name, "kind": e.kind, "what": e.summary, "needs": e.needs}
            for e in MODELS.values()]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "kind", "what", "needs")
    for row in rows:
        table.add_row(*row.values())
    Console(width=160).print(table)


def eval_settings(inp: args.Inputs, task, seq_len, limit, device, dtype, cache_dir, backend,
                  report_data=None, report_limit=None):
    from .evaluate import EvalSettings

    return EvalSettings(model=inp.model, task=task, data=inp.data, seq_len=seq_len, limit=limit,
                        checkpoint=inp.checkpoint, device=device, dtype=dtype,
                        cache_dir=cache_dir, backend=backend, report_data=report_data,
                        report_limit=report_limit)


@command
def eval(model: Optional[str] = Model(None, "the plan's model, else smollm2"),
         task: Optional[str] = Task, data: Optional[str] = Data,
         seq_len: Optional[int] = SeqLen, limit: Optional[int] = Limit,
         checkpoint: Optional[str] = Checkpoint,
         uniform: Optional[str] = typer.Option(None, "--uniform", metavar="NBITS:GROUP",
                                               rich_help_panel=QUANT,
                                               help="One config on every layer but the head, "
                                               "the embeddings and routers, e.g. 4:64 (4:row: "
                                               "whole rows); a layer that cannot take it is "
                                               "skipped and named."),
         whole_model: bool = typer.Option(False, "--whole-model", metavar="", rich_help_panel=QUANT,
                                          help="With --uniform: also the head and the "
                                          "embeddings (a tied pair as one tensor)."),
         plan: Optional[Path] = typer.Option(None, "--plan", metavar="FILE",
                                             rich_help_panel=QUANT,
                                             help="A plan file (autoq.plan/1)."),
         split: str = typer.Option("search", "--split", metavar=one_of(args.SPLITS),
                                   rich_help_panel=MODEL_DATA,
                                   help="Which split of the task to score (--data is its data): "
                                   "the one searches choose on, or the one they report on."),
         kld: bool = typer.Option(False, "--kld", metavar="", rich_help_panel=MODEL_DATA,
                                  help="Also measure the KL divergence from the unquantized "
                                  "model (one more pass of it over the data)."),
         device: str = Device, dtype: str = Dtype, backend: str = Backend,
         cache_dir: Optional[str] = CacheDir, as_json: bool = Json, quiet: bool = Quiet):
    """Evaluate a model (unquantized, uniform, or from a plan): quality, exact size, speed."""
    args.choice("--split", split, args.SPLITS)
    the_plan, cfg = args.plan_or_uniform(plan, uniform)
    model = model or (the_plan.model if the_plan else DEFAULT_MODEL)
    checkpoint = checkpoint or (the_plan.extra.get("checkpoint") if the_plan else None)
    inp = args.inputs(model, task, data, seq_len, limit, checkpoint, device, dtype, backend,
                      cache_dir)
    from .coverage import summary as coverage_summary
    from .evaluate import Evaluator
    from .plan import uniform_plan

    settings = eval_settings(inp, task, seq_len, limit, device, dtype, cache_dir, backend)
    if split == "report":  # --data and --limit are the report split's
        settings = replace(settings, data=None, limit=None, report_data=settings.data,
                           report_limit=settings.limit)
    ev = Evaluator(settings)
    if kld:
        ev.use_reference(ev.measure_reference(split)[0], split)
    keep = ev.loaded.keep()
    if cfg is not None:
        keep = {n: why for n, why in keep.items() if not whole_model or why == "a router"}
        the_plan = uniform_plan(inp.model, cfg, ev.shapes, keep)
    resolved = ev.resolve(the_plan, str(plan) if plan else "--uniform") if the_plan else \
        {n: None for n in ev.shapes}
    skipped = the_plan.extra.get("skipped", {}) if the_plan else {}
    for name, why in skipped.items():
        progress.say(f"--uniform {uniform}: {name} skipped ({why})")
    metrics = ev.run(resolved, split=split)
    metrics.pop("units")  # per-window / per-image values: for a search, not for a user
    cov = ev.coverage(resolved, {**keep, **{n: f"cannot take {uniform}" for n in skipped}})
    result = {"model": model, "task": ev.task.name,
              "config": uniform or (str(plan) if plan else "unquantized"), **metrics,
              "coverage": cov, "ties": ev.tie_notes(resolved)}
    if not as_json:
        progress.say(coverage_summary(cov))
    _emit(as_json, f"autoq eval: {model} / {ev.task.name}", result)


@command
def apply(plan: Path = typer.Argument(..., metavar="PLAN",
                                      help="Plan file (autoq.plan/1), e.g. results/<study>/best.json."),
          out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="DIR",
                                             rich_help_panel=OUTPUT,
                                             show_default="<plan folder>/<plan name>-model",
                                             help="Folder to write the quantized model to."),
          force: bool = typer.Option(False, "--force", metavar="", rich_help_panel=OUTPUT,
                                     help="Replace a non-empty --out folder."),
          run_eval: bool = typer.Option(False, "--eval", metavar="", rich_help_panel=MODEL_DATA,
                                        help="Also evaluate the reloaded model."),
          task: Optional[str] = Task, data: Optional[str] = Data, seq_len: Optional[int] = SeqLen,
          limit: Optional[int] = Limit, checkpoint: Optional[str] = Checkpoint,
          device: str = Device, dtype: str = Dtype, backend: str = Backend,
          cache_dir: Optional[str] = CacheDir, as_json: bool = Json, quiet: bool = Quiet):
    """Quantize the plan's model with the plan, save it (HQQ format + plan), and check
    that the reloaded model gives the same outputs. --out appears only when all is done."""
    from .plan import Plan

    the_plan = Plan.load(plan)
    args.check_out(out or args.default_out(plan), force)
    inp = args.inputs(the_plan.model, task, data, seq_len, limit,
                      checkpoint or the_plan.extra.get("checkpoint"), device, dtype, backend,
                      cache_dir)
    from .apply import apply_plan

    result = apply_plan(plan, eval_settings(inp, task, seq_len, limit, device, dtype, cache_dir,
                                            backend), out=out, force=force, evaluate=run_eval)
    _emit(as_json, f"autoq apply: {result['model']} -> {result['out']}", result)


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
           report_data: Optional[str] = typer.Option(
               None, "--report-data", metavar="PATH", rich_help_panel=MODEL_DATA,
               show_default="the task's report split",
               help="The report split's data (e.g. wiki.test.raw): the front and best.json are "
               "scored on it in full at the end; --data is the search split."),
           report_limit: Optional[int] = typer.Option(
               None, "--report-limit", metavar="N", rich_help_panel=MODEL_DATA,
               show_default="all", help="Use only the first N units of the report split."),
           max_size_mib: Optional[float] = typer.Option(
               None, "--max-size-mib", metavar="MIB", rich_help_panel=TARGET,
               help="Also require size <= MIB."),
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
                                                   help="Old name of --prior-trials."),
           prune: bool = typer.Option(True, "--prune/--no-prune", metavar="",
                                      rich_help_panel=BUDGET,
                                      help="Stop scoring a trial once the data seen decides the "
                                      "target (Pareto configs are then scored in full)."),
           space: Optional[str] = typer.Option(
               None, "--space", metavar="FILE|NAME", rich_help_panel=STRATEGY,
               show_default="the model family's per-layer space",
               help="Search-space YAML or shipped name."),
           sampler: str = Sampler,
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
                                                   help="Old name of --trial-speed."),
           measure_front: Optional[int] = typer.Option(
               None, "--measure-front", metavar="N", rich_help_panel=SPEED, show_default="all",
               help="Re-measure the speed of at most N Pareto configs (best first)."),
           one_shot: str = typer.Option(
               "4,4.5,5,6", "--one-shot", metavar="BITS,...|none", rich_help_panel=BUDGET,
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
    metric, target = args.search_target(inp.task["metric"], inp.task["name"], target_ppl,
                                        target_acc, target_kld)
    report_data = args.report_inputs(inp.task, report_data, report_limit)
    args.search_budget(trials, timeout, max_size_mib, prior_trials, measure_front)
    args.search_setup(space, storage, out, sampler, trial_speed, minimize)
    budgets = args.one_shot(one_shot)
    import optuna

    from .search.run import SearchSettings
    from .search.run import search as run_search

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = SearchSettings(
        eval=eval_settings(inp, task, seq_len, limit, device, dtype,
                           cache_dir or str(out / "layer-cache"), backend, report_data,
                           report_limit),
        target=target, metric=metric, trials=trials, max_size_mib=max_size_mib,
        timeout=timeout, space=space, study=study, storage=storage, out=str(out), seed=seed,
        prior_trials=prior_trials, trial_speed=trial_speed, minimize=minimize, prune=prune,
        sampler=sampler, measure_front=measure_front, all_options=all_options,
        model_as_typed=model, one_shot=budgets)
    result = run_search(settings, say=progress.say if progress.ENABLED else lambda m: None)
    if as_json:
        typer.echo(json.dumps({"study": result.study_dir.name, "study_dir": str(result.study_dir),
                               "metric": settings.metric, "target": target,
                               "objective": minimize,
                               "finished": result.finished, "front": result.front,
                               "best": result.best, "best_note": best_note(result, settings)}))
        return
    _table(f"autoq search: {result.study_dir.name}",
           {"study folder": str(result.study_dir), "finished trials": result.finished,
            "pareto configs": len(result.front), "best.json": best_note(result, settings)})


def best_note(result, settings) -> str:
    """What best.json is, in words (there is none without a target)."""
    if settings.target is None:
        return (f"none: no quality target (--target-{'ppl' if settings.metric == 'ppl' else 'acc'}"
                " none), so no config is best; pick one from the Pareto front (pareto.json)")
    if not result.best:
        return "none: no finished trial meets the target yet"
    m, metric = result.best["metrics"], settings.metric
    fast = f", {m['latency_ms']:.3g} ms predicted" if settings.minimize == "latency" else ""
    note = (f"{metric} {m[metric]:.4g}, {m['size_mib']:.1f} MiB, "
            f"{m['bits_per_weight']:.2f} bits/weight{fast} (search split)")
    rep = m.get("report")
    if rep and metric in rep:
        verdict = "meets" if rep.get("meets_target") else "misses"
        there = f" there ({rep['target']:.4g}: the same loss against fp)" \
            if isinstance(rep.get("target"), float) and rep["target"] != settings.target else ""
        note += f"; report split: {metric} {rep[metric]:.4g}, {verdict} the target{there}"
    return note


@command
def report(sources: Optional[list[str]] = typer.Argument(
               None, metavar="STUDY_DIR_OR_STORAGE", show_default="every study under results/",
               help="Study folders, or Optuna storages (sqlite:///study.db, postgresql://..., "
               "a journal file)."),
           out: Path = typer.Option(Path("results/report"), "--out", "-o", metavar="DIR",
                                    rich_help_panel=OUTPUT,
                                    help="Folder for the pictures, report.html and report.md."),
           formats: str = typer.Option("png,html,md", "--format", metavar="png,html,md",
                                       rich_help_panel=OUTPUT, help="Comma-separated formats."),
           study: Optional[str] = typer.Option(None, "--study", metavar="NAME",
                                               help="Only the study of this name (e.g. one of "
                                               "several in a storage)."),
           baselines: bool = typer.Option(False, "--baselines", metavar="",
                                          help="First evaluate missing uniform reference points "
                                          "with each study's protocol and store them with it."),
           as_json: bool = typer.Option(False, "--json", metavar="", rich_help_panel=OUTPUT,
                                        help="Print the written files as one JSON object."),
           quiet: bool = Quiet):
    """Draw Pareto fronts (quality x size, bits/weight, speed), bit-allocation heatmaps and
    a table of the Pareto configs; safe to run while a search is still going."""
    from . import report as rep

    wanted = rep.parse_formats(formats)
    args.folder_path("--out", out)
    from rich.console import Console

    from .report import baselines as base
    from .report import load, tables

    studies = load.find_studies(sources or [], study)
    if baselines:
        for s in studies:
            added = base.fill(s)
            progress.say(f"{s.name}: {len(added)} reference points added"
                         + (f" ({', '.join(added)})" if added else ""))
    written = rep.write(studies, out, wanted)
    if as_json:
        typer.echo(json.dumps({"studies": [s.name for s in studies],
                               "written": [str(p) for p in written]}))
        return
    console = Console(width=160)
    if not quiet:
        tables.terminal(studies, console)
    for path in written:
        console.print(f"wrote {path}")


from . import cli_run  # noqa: E402,F401  (registers generate, predict, export)


def main() -> None:
    app(prog_name="autoq")


if __name__ == "__main__":  # python -m autoq.cli: the app of the module, with cli_run's commands
    from autoq.cli import main as module_main

    module_main()
