"""`autoq models`, `autoq eval`, `autoq apply`: the registry, one evaluation, a plan
applied and saved."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from .. import progress
from ..tasks import SPLITS
from . import args
from .app import command, emit
from .options import (DEFAULT_MODEL, MODEL_DATA, OUTPUT, QUANT, Backend, CacheDir, Checkpoint,
                      Data, Device, Dtype, Json, Limit, Model, Quiet, SeqLen, Task, one_of)


@command
def models(as_json: bool = Json, quiet: bool = Quiet):
    """List the model registry and what each model needs."""
    from ..models import MODELS

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
    from ..pipeline.evaluator import EvalSettings

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
                                             help="A plan file (autoq.plan/2 or /1)."),
         split: str = typer.Option("search", "--split", metavar=one_of(SPLITS),
                                   rich_help_panel=MODEL_DATA,
                                   help="Which split of the task to score (--data is its data): "
                                   "the one searches choose on, or the one they report on."),
         kld: bool = typer.Option(False, "--kld", metavar="", rich_help_panel=MODEL_DATA,
                                  help="Also measure the KL divergence from the unquantized "
                                  "model (one more pass of it over the data)."),
         device: str = Device, dtype: str = Dtype, backend: str = Backend,
         cache_dir: Optional[str] = CacheDir, as_json: bool = Json, quiet: bool = Quiet):
    """Evaluate a model (unquantized, uniform, or from a plan): quality, exact size, speed."""
    args.choice("--split", split, SPLITS)
    the_plan, cfg = args.plan_or_uniform(plan, uniform)
    model = model or (the_plan.model if the_plan else DEFAULT_MODEL)
    checkpoint = checkpoint or (the_plan.extra.get("checkpoint") if the_plan else None)
    inp = args.inputs(model, task, data, seq_len, limit, checkpoint, device, dtype, backend,
                      cache_dir)
    from ..models.coverage import summary as coverage_summary
    from ..pipeline.evaluator import Evaluator
    from ..plan import uniform_plan

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
    metrics = ev.run(resolved, split=split,
                     reasons={**keep, **{n: f"cannot take {uniform}" for n in skipped}})
    metrics.pop("units")  # per-window / per-image values: for a search, not for a user
    cov = ev.loaded.quantized.coverage
    result = {"model": model, "task": ev.task.name,
              "config": uniform or (str(plan) if plan else "unquantized"), **metrics,
              "coverage": cov, "ties": ev.loaded.quantized.ties}
    if not as_json:
        progress.say(coverage_summary(cov))
    emit(as_json, f"autoq eval: {model} / {ev.task.name}", result)


@command
def apply(plan: Path = typer.Argument(..., metavar="PLAN",
                                      help="Plan file (autoq.plan/2 or /1), e.g. "
                                      "results/<study>/best.json."),
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
    """Quantize the plan's model with the plan, save it (the method's format + plan), and
    check that the reloaded model gives the same outputs. --out appears only when all is
    done."""
    from ..plan import Plan

    the_plan = Plan.load(plan)
    out = out or args.default_out(plan)
    args.check_out(out, force)
    inp = args.inputs(the_plan.model, task, data, seq_len, limit,
                      checkpoint or the_plan.extra.get("checkpoint"), device, dtype, backend,
                      cache_dir)
    from ..pipeline.apply import apply_plan

    result = apply_plan(plan, eval_settings(inp, task, seq_len, limit, device, dtype, cache_dir,
                                            backend), out=out, force=force, evaluate=run_eval)
    emit(as_json, f"autoq apply: {result['model']} -> {result['out']}", result)
