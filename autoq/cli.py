"""autoq command line: one function per command; the docstring is the help."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Optional

import typer

from . import progress
from .errors import UserError
from .plan import LayerConfig, Plan, uniform_plan

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Find, apply and compare per-layer mixed-precision HQQ quantization.")

# ---- options shared by several commands (defaults live here, once) -----------------
Model = typer.Option("smollm2", "--model", "-m", help="Registry name, hf:<id|path> or timm:<name> (see `autoq models`).")
Task = typer.Option(None, "--task", "-t", help="wikitext2 or cifar100 (default: the model's usual task).")
Data = typer.Option(None, "--data", help="Local data: wiki.test.raw file or cifar-100-python folder (default: the hub).")
SeqLen = typer.Option(None, "--seq-len", help="Tokens per perplexity window (default 2048).")
Limit = typer.Option(None, "--limit", help="Use only the first N windows / images.")
Checkpoint = typer.Option(None, "--checkpoint", help="State dict for ViTs (loaded with weights_only=True).")
Device = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
Dtype = typer.Option("auto", "--dtype", help="auto (fp16 on GPU, fp32 on CPU), fp32, fp16 or bf16.")
CacheDir = typer.Option(None, "--cache-dir", help="Reuse quantized layers across runs from this folder.")
Quiet = typer.Option(False, "--quiet", "-q", help="No progress bars.")


def command(fn):
    """Register `fn` as a command; a UserError becomes one sentence and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        progress.ENABLED = not kwargs.get("quiet", False) and not kwargs.get("as_json", False)
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
def eval(model: str = Model, task: Optional[str] = Task, data: Optional[str] = Data,
         seq_len: Optional[int] = SeqLen, limit: Optional[int] = Limit,
         uniform: Optional[str] = typer.Option(None, "--uniform", help="NBITS:GROUP on every layer but the head, e.g. 4:64."),
         plan: Optional[Path] = typer.Option(None, "--plan", help="A plan file (autoq.plan/1)."),
         checkpoint: Optional[str] = Checkpoint, device: str = Device, dtype: str = Dtype,
         cache_dir: Optional[str] = CacheDir, as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
         quiet: bool = Quiet):
    """Evaluate a model (unquantized, uniform, or from a plan): quality, exact size, speed."""
    from .evaluate import EvalSettings, Evaluator

    if uniform and plan:
        raise UserError("give either --uniform or --plan, not both.")
    cfg = LayerConfig.parse(uniform) if uniform else None
    the_plan = Plan.load(plan) if plan else None
    if the_plan is not None and the_plan.model != model and model == "smollm2":
        model = the_plan.model  # the plan names its model
    ev = Evaluator(EvalSettings(model, task, data, seq_len, limit, checkpoint, device, dtype,
                                cache_dir))
    if cfg is not None:
        the_plan = uniform_plan(model, cfg, ev.shapes, ev.loaded.heads)
    resolved = ev.resolve(the_plan, str(plan) if plan else "--uniform") if the_plan else \
        {n: None for n in ev.shapes}
    result = {"model": model, "task": ev.task.name,
              "config": uniform or (str(plan) if plan else "unquantized"), **ev.run(resolved)}
    if as_json:
        typer.echo(json.dumps(result))
    else:
        _table(f"autoq eval: {model} / {ev.task.name}", result)


@command
def apply(plan: Path = typer.Argument(..., help="Plan file (autoq.plan/1), e.g. results/<study>/best.json."),
          out: Path = typer.Option(..., "--out", "-o", help="Folder to write the quantized model to."),
          run_eval: bool = typer.Option(False, "--eval", help="Also evaluate the reloaded model."),
          task: Optional[str] = Task, data: Optional[str] = Data, seq_len: Optional[int] = SeqLen,
          limit: Optional[int] = Limit, checkpoint: Optional[str] = Checkpoint,
          device: str = Device, dtype: str = Dtype, cache_dir: Optional[str] = CacheDir,
          force: bool = typer.Option(False, "--force", help="Replace a non-empty --out folder."),
          quiet: bool = Quiet):
    """Quantize the plan's model with the plan, save it (HQQ format + plan), and check
    that the reloaded model gives the same outputs."""
    import torch

    from . import saved
    from .models import load_model, pick_device, pick_dtype
    from .quantize import LayerCache, quantize_
    from .size import measure, saved_tensor_bytes

    the_plan = Plan.load(plan)
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"--out {out} exists and is not empty; pick a new folder or pass --force.")
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    progress.say(f"loading model {the_plan.model}")
    loaded = load_model(the_plan.model, dev, dt, checkpoint)
    resolved = the_plan.resolve(loaded.shapes(), loaded.heads, str(plan))
    quantize_(loaded.model, resolved, device=dev, dtype=dt, cache=LayerCache(cache_dir))
    size = measure(loaded.model)
    reference = saved.probe_output(loaded)
    the_plan.metrics.update(size_mib=size.size_mib, bits_per_weight=size.bits_per_weight)
    saved.save(loaded, the_plan, out, overwrite=force)
    del loaded
    back = saved.load(out, dev, dt)
    again = saved.probe_output(back)
    diff = (again - reference).abs().max().item()
    if not torch.allclose(again, reference, rtol=1e-4, atol=1e-4):
        raise RuntimeError(f"reloaded model differs from the quantized one (max |diff| {diff})")
    file_bytes = saved_tensor_bytes(torch.load(out / saved.WEIGHTS, map_location="cpu",
                                               weights_only=True))
    result = {"out": str(out), "layers_quantized": sum(c is not None for c in resolved.values()),
              "size_mib": size.size_mib, "saved_tensor_mib": file_bytes / 2**20,
              "bits_per_weight": size.bits_per_weight, "reload_max_abs_diff": diff}
    if run_eval:
        from .tasks import get_task, load_data, scores
        from .evaluate import DEFAULT_TASK

        t = get_task(task or DEFAULT_TASK[back.kind])
        dataset = load_data(t, back, data, seq_len, limit)
        *_, (_, value) = scores(t, back, dataset)
        result[t.metric] = value
        the_plan.metrics[t.metric] = value
        the_plan.save(out / "plan.json")
    _table(f"autoq apply: {the_plan.model} -> {out}", result)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
