"""`apply_plan`: quantize a plan's model, save it, and prove the saved folder right.

The folder is written under a temporary name; it appears at `out` only after the
reloaded model gave the same outputs and the same size as the quantized one (and,
with a task, was scored). `autoq apply` is this function plus printing.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import progress
from ..models import check_model, pick_device, pick_dtype, saved
from ..models.coverage import summary as coverage_summary
from ..plan import Plan
from ..quant.cache import LayerCache
from ..quant.size import measure, saved_tensor_bytes, storage_dtype
from ..serve import require_backend
from ..tasks import get_task
from . import load, quantize, resolve, serve
from .evaluator import EvalSettings

SIZE_TOLERANCE = 0.01   # saved tensors and the reloaded model within 1% of the measured size


def apply_plan(plan_path: str | Path, s: EvalSettings = EvalSettings(), *,
               out: Path, force: bool = False, evaluate: bool = False) -> dict:
    """Quantize, save, reload, verify (and with `evaluate`, score on `s.task`, default
    the model's usual task); the result row. `s.model` is not used: the plan names
    its model. A non-empty `out` is replaced only with `force` (autoq.models.saved)."""
    plan_path = Path(plan_path)
    plan = Plan.load(plan_path)
    checkpoint = s.checkpoint or plan.extra.get("checkpoint")
    model = check_model(plan.model, checkpoint)  # local paths absolute in the saved plan
    if model != plan.model:
        plan.extra.setdefault("model_as_typed", plan.model)
        plan.model = model
    dev = pick_device(s.device)
    dt = pick_dtype(s.dtype, dev)
    backend = require_backend(s.backend, dev)
    progress.say(f"loading model {plan.model}")
    for note in plan.version_notes():
        progress.say(note)
    loaded = load(plan.model, dev, dt, checkpoint)
    resolved = resolve(loaded, plan, str(plan_path))
    usual = get_task(s.task or loaded.default_task)
    task = usual if evaluate else None
    dataset = task.load(loaded, s.data, s.seq_len, s.limit) if task else None
    quantize(loaded, resolved, cache=LayerCache(s.cache_dir))
    saved.round_to_storage_(loaded.quantized, storage_dtype(dt))  # compute what is saved
    size = measure(loaded.quantized)
    reference = loaded.kind.probe_output(loaded)
    names = usual.class_names(s.data)
    if names and len(names) == reference.shape[-1]:  # an image classifier's task with names
        loaded.class_names = names  # saved in autoq.json for `autoq predict`
    plan.metrics.update(size_mib=size.size_mib, bits_per_weight=size.bits_per_weight,
                        model_bits_per_weight=size.model_bits_per_weight)
    cov = loaded.quantized.coverage
    result = {"out": str(out), "model": plan.model,
              "layers_quantized": sum(c is not None for c in resolved.values()),
              "size_mib": size.size_mib, "bits_per_weight": size.bits_per_weight,
              "model_bits_per_weight": size.model_bits_per_weight, "coverage": cov,
              "ties": loaded.quantized.ties}
    progress.say(coverage_summary(cov))
    for note in result["ties"]:
        progress.say(note)

    def verify(folder: Path) -> None:
        """Reload from the folder; same outputs, same size; evaluate if asked."""
        back = saved.load(folder, dev, dt)
        again = back.kind.probe_output(back)
        diff = (again - reference).abs().max().item()
        if not torch.allclose(again, reference, rtol=1e-4, atol=1e-4):
            raise RuntimeError(f"reloaded model differs from the quantized one (max |diff| {diff})")
        weights = torch.load(folder / saved.WEIGHTS, map_location="cpu", weights_only=True)
        result.update(saved_tensor_mib=saved_tensor_bytes(weights) / 2**20,
                      reload_size_mib=measure(back.quantized).size_mib, reload_max_abs_diff=diff)
        for key in ("saved_tensor_mib", "reload_size_mib"):
            if abs(result[key] - size.size_mib) > SIZE_TOLERANCE * size.size_mib:
                raise RuntimeError(f"{key} {result[key]:.3f} differs from the measured size "
                                   f"{size.size_mib:.3f} MiB by more than 1%")
        result.update(serve(back, backend))  # serve (and evaluate) with the backend
        if backend != "hqq":
            result["served_max_abs_diff"] = (back.kind.probe_output(back)
                                             - reference).abs().max().item()
        if task is not None:
            progress.say(f"evaluating the reloaded model on {task.name}")
            scores = task.score(back, dataset)
            result.update(scores)
            plan.metrics["saved_model"] = {**scores, "protocol": task.protocol(dataset)}
            plan.save(folder / "plan.json")

    saved.save(loaded, plan, out, overwrite=force, verify=verify)
    return result
