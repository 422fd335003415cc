"""Reference points: configs scored on all the data, shared by every study that uses
the same protocol under one `--out` (`<out>/baselines/`, files named by a hash of the
model, data, protocol, device and backend):

- the fp model's distributions per split (`reference-<key>.pt`, autoq.kld): every
  evaluation then measures the KL from the fp model beside the task's own metric;
- baselines: the fp model and the space's uniform configs (`baselines-<key>.json`,
  also stored with each study: baselines.json and the `autoq:baselines` attribute),
  each with its report-split metrics under "report" once a search reported (scored
  again when a later search reports on another protocol, e.g. a larger --report-limit);
- reference units: their per-unit values, per metric (`units-<key>.json`), plus every
  trial of the study scored in full. Early stopping estimates a partly scored trial
  from the reference it agrees with best (`autoq.estimate`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from optuna.trial import TrialState

from ..tasks import kld
from .. import study as contract
from ..errors import deprecated
from ..io import write_json
from ..quant import FP, LayerConfig
from ..plan import uniform_plan
from .session import Session


PARTIAL = 0.1   # a uniform reference point that leaves more of its weights fp is no reference


def reference_plan(ev, label: str) -> tuple[dict[str, LayerConfig | None] | None, str]:
    """A reference point as a resolved plan: fp, or NBITS:GROUP on every layer but the
    head, the embeddings and routers (a layer that cannot take it stays fp), and why not
    (None) when layers holding more than PARTIAL of those weights cannot take it."""
    if label == FP:
        return {n: None for n in ev.shapes}, ""
    plan = uniform_plan(ev.settings.model, LayerConfig.parse(label), ev.shapes, ev.loaded.keep())
    skipped = plan.extra.get("skipped", {})
    weights = {n: fin * fout for n, (fin, fout) in ev.shapes.items() if n not in ev.loaded.keep()}
    left = sum(weights[n] for n in skipped) / max(sum(weights.values()), 1)
    if left > PARTIAL:
        first = next(iter(skipped))
        return None, (f"{len(skipped)} of {len(weights)} layers ({left:.0%} of their weights) "
                      f"cannot take it, e.g. {first}: {skipped[first]}")
    return ev.resolve(plan, f"uniform {label}"), ""


def measure(ev, label: str, say, split: str = "search") -> dict | None:
    """A reference point's metrics on a split (speed measured on the search split) and
    per-unit values under "units"; None (said) when too many layers cannot take it."""
    resolved, why = reference_plan(ev, label)
    if resolved is None:
        say(f"baseline {label}: skipped, {why}")
        return None
    say(f"baseline {label}: evaluating ({split} split)")
    metrics = {**ev.run(resolved, speed=split == "search", split=split),
               "speed_source": "measured"}
    say(f"baseline {label}: {ev.task.metric} {metrics[ev.task.metric]:.4g}, "
        f"{metrics['size_mib']:.1f} MiB, {metrics['bits_per_weight']:.2f} b/w")
    return metrics


def as_units(value, metric: str) -> dict[str, list[float]]:
    """Stored units as metric -> values (studies before KL stored one list: deprecated)."""
    if isinstance(value, dict):
        return dict(value)
    if value:
        deprecated("per-unit values stored as one list (a study written before KL)",
                   "a new study (metric -> values)")
    return {metric: list(value or ())}


class References:
    def __init__(self, session: Session):
        self.session = session
        self.units_of: dict[str, dict[str, list[float]]] = {}   # label -> metric -> units

    def key(self, split: str = "search") -> str:
        s, ev = self.session.s, self.session.ev
        ident = [s.eval.model, s.eval.checkpoint, ev.task.name, ev.split(split).protocol,
                 str(ev.dtype), ev.device.type, ev.backend]
        return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]

    def _shared(self, kind: str, split: str = "search", ext: str = "json") -> Path:
        return self.session.out / "baselines" / f"{kind}-{self.key(split)}.{ext}"

    # ---- the fp model's distributions -------------------------------------------------
    def use_reference(self, split: str = "search") -> None:
        """KL from here on, on `split`: the fp distributions stored, or measured once. That
        pass is also the fp baseline on the split (its units too, on the search split): the
        fp model is scored once per split."""
        ev = self.session.ev
        path = self._shared("reference", split, "pt")
        reference = kld.load(path)
        if reference is None:
            reference, fp = ev.measure_reference(split, speed=split == "search")
            kld.save(reference, path)
            units = fp.pop("units")
            if split == "search":
                self.save_units(FP, units)
                self._update(FP, {**fp, "speed_source": "measured"})
            elif FP in {**self._read_shared(), **self.stored()}:
                self._update(FP, {"report": report_entry(fp)})
        ev.use_reference(reference, split)

    # ---- baselines -----------------------------------------------------------------
    def stored(self) -> dict:
        return dict(contract.attr(self.session.study.user_attrs, contract.BASELINES, {}))

    def _read_shared(self) -> dict:
        """The baselines every study under this --out shares (<out>/baselines/)."""
        path = self._shared("baselines")
        return json.loads(path.read_text()) if path.exists() else {}

    def _store(self, have: dict) -> None:
        self.session.study.set_user_attr(contract.BASELINES, have)
        write_json(self.session.dir / contract.BASELINES_FILE, have)

    def _update(self, label: str, metrics: dict) -> dict:
        """Merge one reference point into the shared file and the study."""
        have = {**self._read_shared(), **self.stored()}
        have[label] = {**have.get(label, {}), **metrics}
        self._store(have)
        write_json(self._shared("baselines"), have)
        return have

    def labels(self) -> list[str]:
        return [FP] + [c.label for c in self.session.space.baselines]

    def baselines(self) -> dict:
        """fp + the space's uniform configs: measured if no study under this --out has
        them yet, then stored with this study too."""
        have = {**self._read_shared(), **self.stored()}
        for label in self.labels():
            if label in have:
                continue
            metrics = measure(self.session.ev, label, self.session.say)
            if metrics is not None:
                self.save_units(label, metrics.pop("units"))
                have = self._update(label, metrics)
        self._store(have)
        return have

    def report(self) -> dict:
        """The baselines on the report split too (their metrics under "report")."""
        have = self.baselines()
        protocol = self.session.ev.split("report").protocol
        shared = self._read_shared()
        for label in self.labels():
            if label not in have or scored_on(have[label].get("report"), protocol):
                continue
            theirs = shared.get(label, {}).get("report")
            if scored_on(theirs, protocol):   # another study under this --out scored it
                have = self._update(label, {"report": theirs})
                continue
            metrics = measure(self.session.ev, label, self.session.say, "report")
            if metrics is not None:
                metrics.pop("units")
                have = self._update(label, {"report": report_entry(metrics)})
        return have

    # ---- per-unit values --------------------------------------------------------------
    def save_units(self, label: str, units: dict[str, list[float]]) -> None:
        path = self._shared("units")
        known = json.loads(path.read_text()) if path.exists() else {}
        write_json(path, {**known, label: units})

    def load_units(self) -> None:
        path = self._shared("units")
        metric = self.session.ev.task.metric
        known = json.loads(path.read_text()) if path.exists() else {}
        self.units_of = {label: as_units(u, metric) for label, u in known.items()}

    def units(self, metric: str) -> dict[str, list[float]]:
        """Every config scored on all the data, its units of `metric`: the baselines,
        and the study's trials scored in full (directly, or rescored as front configs)."""
        study, total = self.session.study, self.session.ev.total
        primary = self.session.ev.task.metric
        refs = {label: u[metric] for label, u in self.units_of.items() if metric in u}
        full = [(t.number, contract.attr(t.user_attrs, contract.UNITS))
                for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        full += [(n, e["units"]) for n, e in
                 contract.attr(study.user_attrs, contract.RESCORED, {}).items()]
        for number, units in full:
            units = as_units(units, primary).get(metric, ())
            if len(units) == total:
                refs[f"trial {number}"] = units
        return refs


def scored_on(entry: dict | None, protocol: str) -> bool:
    """A stored report-split entry that was scored on `protocol` (the report split's
    protocol now): kept; any other (another file or --report-limit) is scored again."""
    return isinstance(entry, dict) and entry.get("protocol") == protocol


def report_entry(metrics: dict) -> dict:
    """What a plan keeps of its report-split evaluation."""
    keep = ("ppl", "accuracy", "kld", "protocol", "fraction", "eval_seconds")
    return {k: metrics[k] for k in keep if k in metrics}
