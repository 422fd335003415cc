"""autoq command line: one function per command; the docstring is the help."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Optional

import typer

from . import progress
from .errors import UserError
from .plan import LayerConfig, Plan, uniform_plan

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Find, apply and compare per-layer mixed-precision HQQ quantization.")

# ---- options shared by several commands (defaults live here, once) -----------------
DEFAULT_MODEL = "smollm2"
Model = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Registry name, hf:<id|path> or timm:<name> (see `autoq models`).")
Task = typer.Option(None, "--task", "-t", help="wikitext2, cifar100 or digits (default: the model's usual task).")
Data = typer.Option(None, "--data", help="Local data: wiki.test.raw file or cifar-100-python folder (default: the hub; digits takes none).")
SeqLen = typer.Option(None, "--seq-len", help="Tokens per perplexity window (default 2048).")
Limit = typer.Option(None, "--limit", help="Use only the first N windows / images.")
Checkpoint = typer.Option(None, "--checkpoint", help="State dict for ViTs (loaded with weights_only=True).")
Device = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
Dtype = typer.Option("auto", "--dtype", help="auto (fp16 on GPU, fp32 on CPU), fp32, fp16 or bf16.")
CacheDir = typer.Option(None, "--cache-dir", help="Reuse quantized layers across runs from this folder.")
Backend = typer.Option("auto", "--backend", help="Serving kernels: auto (gemlite on CUDA when installed, else hqq), gemlite or hqq.")
Quiet = typer.Option(False, "--quiet", "-q", help="No progress bars.")


def command(fn):
    """Register `fn` as a command; a UserError becomes one sentence and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        progress.ENABLED = not kwargs.get("quiet", False) and not kwargs.get("as_json", False)
        progress.quiet_libraries(not progress.ENABLED)
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2)
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130)
    return app.command()(wrapper)


def _table(title: str, rows: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    for key, value in rows.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(table)


@command
def models(quiet: bool = Quiet):
    """List the model registry and what each model needs."""
    from rich.console import Console
    from rich.table import Table

    from .models import MODELS

    table = Table("name", "kind", "what", "needs")
    for e in MODELS.values():
        table.add_row(e.name, e.kind, e.summary, e.needs)
    Console(width=160).print(table)


@command
def eval(model: Optional[str] = typer.Option(None, "--model", "-m", help="Registry name, hf:<id|path> or timm:<name> (see `autoq models`); default: the plan's model, else smollm2."),
         task: Optional[str] = Task, data: Optional[str] = Data,
         seq_len: Optional[int] = SeqLen, limit: Optional[int] = Limit,
         uniform: Optional[str] = typer.Option(None, "--uniform", help="NBITS:GROUP on every layer but the head, e.g. 4:64."),
         plan: Optional[Path] = typer.Option(None, "--plan", help="A plan file (autoq.plan/1)."),
         checkpoint: Optional[str] = Checkpoint, device: str = Device, dtype: str = Dtype,
         cache_dir: Optional[str] = CacheDir, as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
         backend: str = Backend, quiet: bool = Quiet):
    """Evaluate a model (unquantized, uniform, or from a plan): quality, exact size, speed."""
    from .evaluate import EvalSettings, Evaluator

    if uniform and plan:
        raise UserError("give either --uniform or --plan, not both.")
    cfg = LayerConfig.parse(uniform) if uniform else None
    the_plan = Plan.load(plan) if plan else None
    model = model or (the_plan.model if the_plan else DEFAULT_MODEL)
    ev = Evaluator(EvalSettings(model=model, task=task, data=data, seq_len=seq_len, limit=limit,
                                checkpoint=checkpoint, device=device, dtype=dtype,
                                cache_dir=cache_dir, backend=backend))
    if cfg is not None:
        the_plan = uniform_plan(model, cfg, ev.shapes, ev.loaded.heads)
    resolved = ev.resolve(the_plan, str(plan) if plan else "--uniform") if the_plan else \
        {n: None for n in ev.shapes}
    metrics = ev.run(resolved)
    metrics.pop("units")  # per-window / per-image values: for a search, not for a user
    result = {"model": model, "task": ev.task.name,
              "config": uniform or (str(plan) if plan else "unquantized"), **metrics}
    if as_json:
        typer.echo(json.dumps(result))
    else:
        _table(f"autoq eval: {model} / {ev.task.name}", result)


@command
def apply(plan: Path = typer.Argument(..., help="Plan file (autoq.plan/1), e.g. results/<study>/best.json."),
          out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder to write the quantized model to (default: <plan folder>/<plan name>-model)."),
          run_eval: bool = typer.Option(False, "--eval", help="Also evaluate the reloaded model."),
          task: Optional[str] = Task, data: Optional[str] = Data, seq_len: Optional[int] = SeqLen,
          limit: Optional[int] = Limit, checkpoint: Optional[str] = Checkpoint,
          device: str = Device, dtype: str = Dtype, cache_dir: Optional[str] = CacheDir,
          force: bool = typer.Option(False, "--force", help="Replace a non-empty --out folder."),
          as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
          backend: str = Backend, quiet: bool = Quiet):
    """Quantize the plan's model with the plan, save it (HQQ format + plan), and check
    that the reloaded model gives the same outputs. --out appears only when all is done."""
    from .apply import apply_plan
    from .evaluate import EvalSettings

    result = apply_plan(plan, EvalSettings(
        task=task, data=data, seq_len=seq_len, limit=limit, checkpoint=checkpoint,
        device=device, dtype=dtype, cache_dir=cache_dir, backend=backend),
        out=out, force=force, evaluate=run_eval)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        _table(f"autoq apply: {result['model']} -> {result['out']}", result)


@command
def search(model: str = Model, task: Optional[str] = Task, data: Optional[str] = Data,
           seq_len: Optional[int] = SeqLen, limit: Optional[int] = Limit,
           target_ppl: Optional[float] = typer.Option(None, "--target-ppl", help="Quality target: perplexity at most this."),
           target_acc: Optional[float] = typer.Option(None, "--target-acc", help="Quality target: top-1 accuracy (0-1) at least this."),
           max_size_mib: Optional[float] = typer.Option(None, "--max-size-mib", help="Also require size <= S MiB."),
           trials: int = typer.Option(50, "--trials", help="Total finished trials in the study (re-running resumes)."),
           timeout: Optional[float] = typer.Option(None, "--timeout", help="Stop starting trials after SEC seconds."),
           space: Optional[str] = typer.Option(None, "--space", help="Search-space YAML or shipped name (default: per-layer space of the model family)."),
           study: Optional[str] = typer.Option(None, "--study", help="Study name (default: model-task-target)."),
           storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage URL (default sqlite:///<out>/<study>/study.db)."),
           out: Path = typer.Option(Path("results"), "--out", help="Output root; the study folder is <out>/<study>."),
           seed: int = typer.Option(0, "--seed", help="Random seed of the samplers."),
           prior_trials: Optional[int] = typer.Option(None, "--prior-trials", help="First trials from the sensitivity prior (knapsack), before the sampler (default: trials/3, 2..10)."),
           old_seeds: Optional[int] = typer.Option(None, "--seeds", hidden=True, help="Old name of --prior-trials."),
           trial_speed: str = typer.Option("predicted", "--trial-speed", help="Per-trial speed: predicted (latency model; Pareto configs re-measured) or measured."),
           old_speed: Optional[str] = typer.Option(None, "--speed", hidden=True, help="Old name of --trial-speed."),
           prune: bool = typer.Option(True, "--prune/--no-prune", help="Stop scoring a trial once the data seen decides the target (Pareto configs are then scored in full)."),
           sampler: str = typer.Option("sensitivity", "--sampler", help="Trials after the prior: sensitivity (recalibrated knapsack with perturbed sensitivities), nsga2 or random."),
           measure_front: Optional[int] = typer.Option(None, "--measure-front", help="Re-measure the speed of at most N Pareto configs (best first; default all)."),
           checkpoint: Optional[str] = Checkpoint, device: str = Device, dtype: str = Dtype,
           backend: str = Backend,
           all_options: bool = typer.Option(False, "--all-options", help="With gemlite, also search options it cannot serve (those layers fall back to hqq)."),
           cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="On-disk layer cache (default <out>/layer-cache)."),
           quiet: bool = Quiet):
    """Search per-layer HQQ configs for the smallest model meeting a quality target
    (multi-objective Optuna: size x quality), writing plans ready for `autoq apply`."""
    import optuna

    from .evaluate import EvalSettings
    from .search.run import SearchSettings
    from .search.run import search as run_search

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if (target_ppl is None) == (target_acc is None):
        raise UserError("give exactly one quality target: --target-ppl X or --target-acc Y.")
    if target_acc is not None and not 0 < target_acc <= 1:
        raise UserError(f"--target-acc {target_acc} must be a fraction in (0, 1], e.g. 0.9.")
    if trials < 1:
        raise UserError("--trials must be at least 1.")
    trial_speed = old_speed or trial_speed
    if trial_speed not in ("predicted", "measured"):
        raise UserError(f"--trial-speed {trial_speed!r} must be predicted or measured.")
    ev = EvalSettings(model=model, task=task, data=data, seq_len=seq_len, limit=limit,
                      checkpoint=checkpoint, device=device, dtype=dtype,
                      cache_dir=cache_dir or str(out / "layer-cache"), backend=backend)
    settings = SearchSettings(
        eval=ev, target=target_ppl if target_ppl is not None else target_acc,
        metric="ppl" if target_ppl is not None else "accuracy", trials=trials,
        max_size_mib=max_size_mib, timeout=timeout, space=space, study=study, storage=storage,
        out=str(out), seed=seed, prior_trials=prior_trials if prior_trials is not None
        else old_seeds, trial_speed=trial_speed, prune=prune, sampler=sampler,
        measure_front=measure_front, all_options=all_options)
    result = run_search(settings, say=progress.say if progress.ENABLED else lambda m: None)
    rows = {"study folder": str(result.study_dir), "finished trials": result.finished,
            "pareto configs": len(result.front)}
    if result.best:
        m = result.best["metrics"]
        metric = settings.metric
        rows.update({"best.json": f"{metric} {m[metric]:.4g}, {m['size_mib']:.1f} MiB, "
                                  f"{m['bits_per_weight']:.2f} bits/weight"})
    else:
        rows["best.json"] = "none: no finished trial meets the target yet"
    _table(f"autoq search: {result.study_dir.name}", rows)


@command
def report(sources: Optional[list[str]] = typer.Argument(None, metavar="STUDY_DIR_OR_STORAGE", help="Study folders, or Optuna storages (sqlite:///study.db, postgresql://..., a journal file); default: every study folder under results/."),
           out: Path = typer.Option(Path("results/report"), "--out", "-o", help="Folder for the pictures, report.html and report.md."),
           formats: str = typer.Option("png,html,md", "--format", help="Comma-separated: png, html, md."),
           study: Optional[str] = typer.Option(None, "--study", help="Only the study of this name (e.g. one of several in a storage)."),
           baselines: bool = typer.Option(False, "--baselines", help="First evaluate missing uniform reference points with each study's protocol and store them with the study."),
           quiet: bool = Quiet):
    """Draw Pareto fronts (quality x size, bits/weight, speed), bit-allocation heatmaps and
    a table of the Pareto configs; safe to run while a search is still going."""
    from rich.console import Console

    from . import report as rep
    from .report import baselines as base
    from .report import load, tables

    wanted = rep.parse_formats(formats)
    studies = load.find_studies(sources or [], study)
    if baselines:
        for s in studies:
            added = base.fill(s)
            progress.say(f"{s.name}: {len(added)} reference points added"
                         + (f" ({', '.join(added)})" if added else ""))
    written = rep.write(studies, out, wanted)
    console = Console(width=160)
    if not quiet:
        tables.terminal(studies, console)
    for path in written:
        console.print(f"wrote {path}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
