"""A study opened for one worker: the settings, the loaded model and data, the
space bound to the model's layers, and the Optuna study in its storage.

`open_session` does all the loading and the first writes, in an order that leaves
nothing behind when an input is bad: every input is loaded and checked, and the
storage opened, before the study folder is made.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import optuna

from .. import study as contract
from ..errors import UserError
from ..io import write_json
from ..metrics import Target
from ..models.coverage import of_model
from ..pipeline.evaluator import EvalSettings, Evaluator
from ..quant import LayerConfig
from ..quant.size import STORED_FLOAT_BYTES
from ..plan import Plan
from . import storage as store
from . import BUDGET_SAMPLER, SAMPLERS, TARGET_SAMPLER, fidelity
from .prior import MIB_BITS, layer_bits
from .space import Choice, Space, load_space, parse_option


@dataclass(frozen=True, kw_only=True)
class SearchSettings:
    eval: EvalSettings
    target: float | None               # the quality target (None: map the whole trade-off)
    metric: str                        # "ppl", "accuracy" or "kld": what the target is on
    trials: int = 50
    max_size_mib: float | None = None
    bits: float | None = None          # the size budget in bits per searched weight instead
    timeout: float | None = None
    space: str | None = None
    study: str | None = None
    storage: str | None = None
    out: str = "results"
    seed: int = 0                      # the samplers' random seed
    prior_trials: int | None = None    # first trials from the sensitivity prior (None: auto)
    trial_speed: str = "predicted"     # per-trial speed: predicted, or measured every trial
    minimize: str = "size"             # beside quality: "size" (MiB) or "latency" (predicted)
    prune: bool = True                 # stop scoring a trial once the target is decided
    sampler: str | None = None         # None: evolve in budget mode, else sensitivity
    measure_front: int | None = None   # front configs whose speed is re-measured (None: all)
    report_front: int | None = None    # front configs scored on the report split (None: all)
    all_options: bool = False          # with gemlite: also options it cannot serve
    one_shot: tuple[float, ...] | None = None  # one-shot budgets, bits per searched weight
    #                                    ((): none; None: oneshot.BUDGETS, in budget mode
    #                                    the budget)

    @property
    def budget_mode(self) -> bool:
        """A size budget and no quality target: the best quality at that size."""
        return self.target is None and (self.max_size_mib is not None or self.bits is not None)

    @property
    def sampler_name(self) -> str:
        return self.sampler or (BUDGET_SAMPLER if self.budget_mode else TARGET_SAMPLER)
    model_as_typed: str | None = None  # --model as the user typed it (eval.model: absolute)


def study_name(s: SearchSettings, task: str) -> str:
    target = "map" if s.target is None else f"{s.target:g}"
    if s.budget_mode:
        target = f"-{s.bits:g}bits" if s.bits is not None else f"-{s.max_size_mib:g}mib"
    base = f"{s.model_as_typed or s.eval.model}-{task}-{s.metric}{target}"
    base += "" if s.minimize == "size" else f"-{s.minimize}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("_")


@dataclass
class Session:
    s: SearchSettings
    ev: Evaluator
    target: Target
    space: Space
    choices: list[Choice]
    fixed: dict[str, LayerConfig | None]   # layers the space does not search
    name: str
    dir: Path
    storage_url: str
    storage: optuna.storages.BaseStorage
    study: optuna.Study
    beat_s: float
    grace_s: float
    say: Callable[[str], None]

    rungs: list = field(default_factory=list)   # the fidelity schedule (budget mode)

    @property
    def out(self) -> Path:
        return Path(self.s.out)

    @property
    def speed_key(self) -> str:
        return self.ev.loaded.kind.speed_key

    @property
    def objective_key(self) -> str:
        """What the study minimises beside quality: "size_mib" or "latency_ms"."""
        return contract.objective_key(self.s.minimize)

    def resolved(self, labels: dict[str, str]) -> dict[str, LayerConfig | None]:
        """A trial's choices (param -> option label) as module name -> config."""
        out = dict(self.fixed)
        for c in self.choices:
            cfg = parse_option(labels[c.param], "trial")
            for name in c.layers:
                out[name] = cfg
        return {n: out[n] for n in self.ev.shapes}

    def plan(self, resolved, metrics: dict, number: int | None = None) -> Plan:
        extra = {"study": self.name, "task": self.ev.task.name, "protocol": self.ev.protocol}
        if number is not None:
            extra["trial"] = number
        if self.s.eval.checkpoint:
            extra["checkpoint"] = self.s.eval.checkpoint
        if self.s.model_as_typed not in (None, self.s.eval.model):
            extra["model_as_typed"] = self.s.model_as_typed
        return Plan(self.s.eval.model, dict(resolved), None, dict(metrics), extra)


def info(s: SearchSettings, ev: Evaluator, space: Space, name: str, url: str,
         max_size_mib: float | None, rungs: list) -> dict:
    """The study.json object (also the study's `autoq:study` attribute)."""
    return {"format": contract.FORMAT, "study": name, "storage": url, "model": s.eval.model,
            "task": ev.task.name, "metric": s.metric, contract.OBJECTIVE: s.minimize,
            "higher_is_better": ev.task.higher_is_better(s.metric), "target": s.target,
            "max_size_mib": max_size_mib, "bits": s.bits, "budget_mode": s.budget_mode,
            "sampler": s.sampler_name, "fidelity": fidelity.to_json(rungs, ev, s.prune),
            "protocol": ev.protocol,
            "speed_key": ev.loaded.kind.speed_key, "space": space.source,
            "structure": ev.loaded.structure.to_json(), "heads": sorted(ev.loaded.heads),
            "settings": asdict(s.eval)}


def searched_coverage(ev: Evaluator, space: Space, choices: list[Choice]) -> str:
    """One line: how much of the model the space searches, and what it leaves out."""
    searched = {n for c in choices for n in c.layers}
    reasons = {**space.unsearched(ev.shapes, ev.loaded.structure),
               **{n: why for n, why in ev.loaded.keep().items() if n not in searched}}
    resolved = {n: (LayerConfig(8, None) if n in searched else None) for n in ev.shapes}
    cov = of_model(ev.loaded, resolved, reasons)
    line = (f"the space {space.source} searches {len(searched)} of {cov['weight_bearing_layers']}"
            f" weight-bearing layers ({cov['quantized_weight_share']:.1%} of the weights) in "
            f"{len(choices)} choices")
    kept = "; ".join(f"{why} {v['share']:.1%}" for why, v in cov["kept"].items())
    warn = " (more than 5% of the weights are not searched)" \
        if cov["quantized_weight_share"] < 0.95 else ""
    return line + (f"; kept in full precision: {kept}" if kept else "") + warn


def _allowed(ev: Evaluator, all_options: bool):
    """Options kept per layer: with gemlite, only what gemlite serves itself (unless
    --all-options), so no searched layer silently falls back."""
    if ev.backend == "hqq" or all_options:
        return lambda cfg, fin, fout: True
    from ..serve.backend import servable

    return servable(ev.backend)


def open_session(s: SearchSettings, say: Callable[[str], None] = lambda m: None) -> Session:
    if s.sampler_name not in SAMPLERS:
        raise UserError(f"--sampler {s.sampler!r}: use one of {', '.join(SAMPLERS)}.")
    if s.minimize not in contract.OBJECTIVES:
        raise UserError(f"--minimize {s.minimize!r}: use one of {', '.join(contract.OBJECTIVES)}.")
    if s.storage:
        store.check_url(s.storage)  # a typo fails before the model loads
    beat_s, grace_s = store.timing()
    ev = Evaluator(s.eval)
    ev.search  # the search split is loaded (and bad data refused) before anything is written
    ev.fast_scoring = ev.device.type == "cpu"  # HQQ's CPU forward unpacks per call
    if s.metric not in ev.task.metrics:
        flag = "--target-ppl" if ev.task.metric == "ppl" else "--target-acc"
        raise UserError(f"task {ev.task.name} measures {ev.task.metric} and kld; give {flag} "
                        "or --target-kld.")
    space = load_space(s.space or ev.loaded.kind.default_space)
    structure = ev.loaded.structure
    choices, fixed = space.bind(ev.shapes, _allowed(ev, s.all_options), structure,
                                ev.loaded.quantized.tied_groups())
    say(searched_coverage(ev, space, choices))
    max_size_mib = size_budget(s, ev, choices)
    rungs = fidelity.schedule(ev) if s.budget_mode and s.prune else []
    name = s.study or study_name(s, ev.task.name)
    folder = Path(s.out) / name
    # nothing is written before here: a bad model, data, space or storage leaves no trace
    if s.storage is None:
        folder.mkdir(parents=True, exist_ok=True)
    url = s.storage or f"sqlite:///{folder.resolve()}/study.db"
    storage = store.open_storage(url)
    folder.mkdir(parents=True, exist_ok=True)
    the_info = info(s, ev, space, name, url, max_size_mib, rungs)
    study = _open_study(storage, url, name, the_info, s.seed)
    write_json(folder / contract.STUDY_FILE, the_info)
    target = Target(s.metric, s.target, ev.task.higher_is_better(s.metric), max_size_mib)
    return Session(s, ev, target, space, choices, fixed, name, folder, url, storage, study,
                   beat_s, grace_s, say, rungs)


def size_budget(s: SearchSettings, ev: Evaluator, choices: list[Choice]) -> float | None:
    """The size cap in MiB: --max-size-mib, or --bits B as the model's size with every
    searched matrix at B bits a weight (and the rest as it is)."""
    if s.bits is None:
        return s.max_size_mib
    fp = ev.apply({n: None for n in ev.shapes}).size_mib
    stored = [n for c in choices for n in c.stored]
    fp_bits = 8.0 * STORED_FLOAT_BYTES
    return fp - sum(layer_bits(ev.shapes[n], None, fp_bits) * (1 - s.bits / fp_bits)
                    for n in stored) / MIB_BITS


def _open_study(storage, url: str, name: str, the_info: dict, seed: int) -> optuna.Study:
    sampler = optuna.samplers.RandomSampler(seed=seed)  # replaced once the prior is in
    quality = "maximize" if the_info["higher_is_better"] else "minimize"
    # budget mode: one objective (quality; size is the budget), so Optuna's pruners work
    senses = [quality] if the_info["budget_mode"] else ["minimize", quality]
    try:
        study = optuna.create_study(storage=storage, study_name=name, sampler=sampler,
                                    directions=senses, load_if_exists=True,
                                    pruner=fidelity.pruner())
    except Exception as e:
        raise UserError(f"--storage {url}: cannot create or open study {name!r} "
                        f"({e.__class__.__name__}: {str(e)[:160]}).")
    old = contract.attr(study.user_attrs, contract.INFO)
    if old is None:
        study.set_user_attr(contract.INFO, the_info)
    else:
        old = contract.study_info(old)   # an older study minimised size
        for key in ("model", "task", "target", "protocol", contract.OBJECTIVE,
                    "max_size_mib"):
            was = old.get(key)
            if was != the_info[key]:
                raise UserError(f"study {name!r} in {url} was made with {key}={was!r}, "
                                f"not {the_info[key]!r}; use another --study name or the "
                                "original settings.")
    return study
