"""Every command-line argument, checked before anything heavy is imported or loaded.

The CLI calls `inputs` (and `search_target` ...) first: the first bad argument is
one `UserError` sentence (exit code 2) within a second, before torch, a model or
data is touched. What comes back is what the library gets, with local paths made
absolute, so the plans a command writes work from any directory.
Nothing here imports torch, transformers or timm.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..metrics import METRICS, TARGET_FLAGS
from ..models import DTYPES as MODEL_DTYPES
from ..models.kinds import KINDS
from ..plan import Plan
from ..quant import LayerConfig
from ..search import BUDGET_SAMPLER, SAMPLERS as SAMPLER_REGISTRY
from ..serve import BACKENDS as BACKEND_REGISTRY
from ..study import OBJECTIVES as OBJECTIVE_KEYS
from ..tasks import (at_least, check_counts, check_data_path, check_task_fits,
                     task_spec)

DTYPES = ("auto", *MODEL_DTYPES)
BACKENDS = ("auto", *BACKEND_REGISTRY.names)
SAMPLERS = SAMPLER_REGISTRY.names
TRIAL_SPEEDS = ("predicted", "measured")
OBJECTIVES = tuple(OBJECTIVE_KEYS)              # --minimize: size, latency
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


# ---- single values ---------------------------------------------------------------------
def choice(flag: str, value: str, options: tuple[str, ...]) -> str:
    if value not in options:
        raise UserError(f"{flag} {value!r} is not one of {', '.join(options)}.")
    return value


def above_zero(flag: str, value: float | None, what: str) -> None:
    if value is not None and not value > 0:
        raise UserError(f"{flag} {value:g} must be {what} above 0.")


def checkpoint_file(path: str | None) -> str | None:
    if path is None:
        return None
    if not Path(path).is_file():
        raise UserError(f"--checkpoint {path}: no such file; give a saved state dict (.pt/.pth).")
    return str(Path(path).resolve())


def folder_path(flag: str, path: str | Path | None) -> None:
    """A folder autoq may create: it must not be an existing file."""
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise UserError(f"{flag} {path} is a file; give a folder path.")


def target(flag: str, text: str | None) -> float | None:
    """`--target-ppl` / `--target-acc` / `--target-kld`: a number in the metric's range,
    or `none`."""
    if text is None or text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{flag} {text!r} is not a number; give e.g. "
                        f"{METRICS[TARGET_FLAGS[flag]].example}, or none.")
    if flag == "--target-ppl" and not value > 1:
        raise UserError(f"--target-ppl {text} must be a perplexity above 1 (e.g. 14), or none "
                        "to map the whole trade-off.")
    if flag == "--target-acc" and not 0 < value <= 1:
        raise UserError(f"--target-acc {text} must be an accuracy in (0, 1] (e.g. 0.9), or "
                        "none to map the whole trade-off.")
    if flag == "--target-kld" and not value > 0:
        raise UserError(f"--target-kld {text} must be a KL divergence above 0 (e.g. 0.05 "
                        "nats), or none to map the whole trade-off.")
    return value


# ---- what every command that loads a model shares ----------------------------------------
@dataclass(frozen=True)
class Inputs:
    model: str             # the spec the library loads, local paths absolute
    model_as_typed: str    # for display and study names
    kind: str              # "lm" or "vit"
    task: dict             # the task's YAML (--task, else the model kind's usual task)
    data: str | None       # absolute
    checkpoint: str | None  # absolute


def hardware(device: str, dtype: str, backend: str) -> None:
    if not DEVICE.fullmatch(device):
        raise UserError(f"--device {device!r} is not auto, cpu, cuda or cuda:N.")
    choice("--dtype", dtype, DTYPES)
    choice("--backend", backend, BACKENDS)


def inputs(model: str, task: str | None, data: str | None, seq_len: int | None,
           limit: int | None, checkpoint: str | None, device: str, dtype: str,
           backend: str, cache_dir: str | None) -> Inputs:
    from ..models import check_model, entry_for

    check_counts(seq_len, limit)
    hardware(device, dtype, backend)
    folder_path("--cache-dir", cache_dir)
    checkpoint = checkpoint_file(checkpoint)
    entry = entry_for(model)[0]
    kind = entry.kind
    spec = task_spec(task or entry.default_task or KINDS[kind].default_task)
    check_task_fits(spec, model, kind)
    if spec.get("data_path") == "none" and data is not None:
        raise UserError(f"--data {data}: task {spec['name']} takes no --data (its data ships "
                        "with autoq's dependencies); leave --data out.")
    want_dir = {"file": False, "folder": True}.get(spec.get("data_path"))
    path = check_data_path(data, want_dir)
    resolved = check_model(model, checkpoint)
    return Inputs(resolved, model, kind, spec, str(path.resolve()) if path else None, checkpoint)


def plan_or_uniform(plan: Path | None, uniform: str | None) -> tuple[Plan | None,
                                                                    LayerConfig | None]:
    if plan and uniform:
        raise UserError("give either --uniform or --plan, not both.")
    return (Plan.load(plan) if plan else None), (LayerConfig.parse(uniform) if uniform else None)


# ---- search ------------------------------------------------------------------------------
def search_target(metric: str, task: str, target_ppl: str | None, target_acc: str | None,
                  target_kld: str | None = None, budget: bool = False
                  ) -> tuple[str, float | None]:
    """(the target's metric, its value): exactly one of the flags, the task's own or KL
    (every task measures KL), in its metric's range (or none); with a size `budget`
    (--max-size-mib / --bits) no flag at all means the task's own metric, no target."""
    given = [(f, t) for f, t in (("--target-ppl", target_ppl), ("--target-acc", target_acc),
                                 ("--target-kld", target_kld)) if t is not None]
    if not given and budget:
        return metric, None
    if len(given) != 1:
        raise UserError("give exactly one quality target: --target-ppl X, --target-acc Y or "
                        "--target-kld Z (each may be none, to map the whole trade-off), or "
                        "only a size budget (--max-size-mib S or --bits B) for the best "
                        "quality at that size.")
    flag, text = given[0]
    value = target(flag, text)
    if TARGET_FLAGS[flag] not in (metric, "kld"):
        raise UserError(f"task {task} measures {metric} (and kld); give {METRICS[metric].flag} "
                        "or --target-kld.")
    return TARGET_FLAGS[flag], value


def report_inputs(spec: dict, report_data: str | None, report_limit: int | None) -> str | None:
    """--report-data (checked like --data; absolute) and --report-limit."""
    at_least("--report-limit", report_limit, 1, "window or image")
    if spec.get("data_path") == "none" and report_data is not None:
        raise UserError(f"--report-data {report_data}: task {spec['name']} takes no data "
                        "files; leave it out.")
    want_dir = {"file": False, "folder": True}.get(spec.get("data_path"))
    path = check_data_path(report_data, want_dir, "--report-data")
    return str(path.resolve()) if path else None


def size_budget(max_size_mib: float | None, bits: float | None) -> bool:
    """--max-size-mib or --bits (bits per searched weight), not both; whether one is given."""
    above_zero("--max-size-mib", max_size_mib, "a size in MiB")
    if bits is not None and not 1 <= bits <= 16:
        raise UserError(f"--bits {bits:g} must be bits per searched weight between 1 and 16 "
                        "(e.g. 4.5).")
    if max_size_mib is not None and bits is not None:
        raise UserError("give either --max-size-mib or --bits (the same budget in bits per "
                        "searched weight), not both.")
    return max_size_mib is not None or bits is not None


def search_budget(trials: int, timeout: float | None, prior_trials: int | None,
                  measure_front: int | None, report_front: int | None = None) -> None:
    at_least("--trials", trials, 1, "finished trials in the study")
    above_zero("--timeout", timeout, "a number of seconds")
    at_least("--prior-trials", prior_trials, 0, "trials from the sensitivity prior")
    at_least("--measure-front", measure_front, 0,
             "Pareto configs to re-measure, 0 for none; leave it out to measure all")
    at_least("--report-front", report_front, 1,
             "Pareto configs to score on the report split; leave it out to score all")


def one_shot(text: str) -> tuple[float, ...]:
    """--one-shot: comma-separated budgets in bits per searched weight, or none."""
    if text.strip().lower() == "none":
        return ()
    try:
        budgets = tuple(sorted({float(b) for b in text.split(",") if b.strip()}))
    except ValueError:
        budgets = ()
    if not budgets or not all(1 <= b <= 16 for b in budgets):
        raise UserError(f"--one-shot {text!r} must be budgets in bits per weight between 1 "
                        "and 16, comma-separated (e.g. 4,4.5,5,6), or none.")
    return budgets


def search_setup(space: str | None, storage: str | None, out: Path, sampler: str | None,
                 trial_speed: str, minimize: str, budget_mode: bool = False) -> None:
    """`budget_mode`: a size budget and no quality target (the best quality at that size)."""
    if sampler is not None:
        choice("--sampler", sampler, SAMPLERS)
    choice("--trial-speed", trial_speed, TRIAL_SPEEDS)
    choice("--minimize", minimize, OBJECTIVES)
    if sampler == BUDGET_SAMPLER and not budget_mode:
        raise UserError(f"--sampler {BUDGET_SAMPLER} searches the best quality at a size "
                        "budget: give --max-size-mib or --bits and no quality target.")
    if budget_mode and minimize != "size":
        raise UserError(f"--minimize {minimize} needs a quality target; a size budget alone "
                        "(--max-size-mib / --bits) searches the best quality at that size.")
    folder_path("--out", out)
    if space is not None:
        from ..search.space import load_space

        load_space(space)
    if storage is not None:
        from ..search.storage import check_url

        check_url(storage)
        db = storage.removeprefix("sqlite:///")
        if storage.startswith("sqlite:///") and db not in ("", ":memory:") and \
                not Path(db).parent.is_dir():
            raise UserError(f"--storage {storage}: folder {Path(db).parent} does not exist; "
                            "create it or give another path.")


# ---- apply -------------------------------------------------------------------------------
def default_out(plan_path: Path) -> Path:
    """Where `autoq apply PLAN` writes by default: <plan folder>/<plan name>-model."""
    return plan_path.parent / f"{plan_path.stem}-model"


def check_out(out: Path, force: bool) -> None:
    """`--out` of `autoq apply`: a new or empty folder (or any folder with --force)."""
    folder_path("--out", out)
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"--out {out} exists and is not empty; pick a new folder or pass --force.")


# ---- generate, predict, export: a saved folder ---------------------------------------------
USE = {"lm": "autoq generate {dir} --prompt TEXT", "vit": "autoq predict {dir} IMAGE..."}


def saved_folder(path: str | Path, kind: str | None = None) -> dict:
    """`autoq.json` of a folder written by `autoq apply` (of `kind`, when given)."""
    import json

    p = Path(path)
    if not p.is_dir():
        raise UserError(f"{path}: no such folder; give the --out folder of `autoq apply`.")
    try:
        meta = json.loads((p / "autoq.json").read_text())
        if not isinstance(meta, dict) or meta.get("kind") not in USE or "format" not in meta:
            raise ValueError("not an autoq.saved object")
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a folder written by `autoq apply` (autoq.json: "
                        f"{e.__class__.__name__}); give the --out folder of apply.")
    if kind is not None and meta["kind"] != kind:
        raise UserError(f"{path} holds {KINDS[meta['kind']].words}, not {KINDS[kind].words}; "
                        f"use `{USE[meta['kind']].format(dir=path)}`.")
    return meta


def sampling(max_new_tokens: int, temperature: float, top_p: float) -> None:
    at_least("--max-new-tokens", max_new_tokens, 1, "tokens to generate")
    if not temperature >= 0:
        raise UserError(f"--temperature {temperature:g} must be 0 (greedy) or above.")
    if not 0 < top_p <= 1:
        raise UserError(f"--top-p {top_p:g} must be in (0, 1].")


def new_file(flag: str, path: Path, force: bool) -> None:
    """A file to write: its folder exists; an existing file is replaced only with --force."""
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file path.")
    if not path.parent.is_dir():
        raise UserError(f"{flag} {path}: folder {path.parent} does not exist; create it first.")
    if path.exists() and not force:
        raise UserError(f"{flag} {path} exists; pick a new file or pass --force.")


def image_files(paths: list[str]) -> list[str]:
    for path in paths:
        if not Path(path).is_file():
            raise UserError(f"{path}: no such image file.")
    return [str(Path(p).resolve()) for p in paths]
