"""Reference points: configs scored on all the data, shared by every study that uses
the same protocol under one `--out`.

- baselines: the unquantized model ("fp") and the space's uniform configs, measured
  once per (model, data, protocol, device, backend), kept in
  `<out>/baselines/baselines-<key>.json` and with each study (baselines.json and the
  `autoq:baselines` attribute);
- reference units: their per-window / per-image values (`units-<key>.json`), plus
  every trial of the study scored in full. Early stopping estimates a partly
  scored trial from the reference it agrees with best (`autoq.estimate`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from optuna.trial import TrialState

from .. import study as contract
from ..io import write_json
from ..plan import FP, LayerConfig, uniform_plan
from .session import Session



def reference_plan(ev, label: str) -> dict[str, LayerConfig | None] | None:
    """A reference point as a resolved plan: fp, or NBITS:GROUP on every layer but the
    head, the embeddings and routers (a layer that cannot take it stays fp); None when
    no layer can take that config."""
    if label == FP:
        return {n: None for n in ev.shapes}
    plan = uniform_plan(ev.settings.model, LayerConfig.parse(label), ev.shapes, ev.loaded.keep())
    if all(c is None for c in plan.layers.values()):
        return None
    return ev.resolve(plan, f"uniform {label}")


def measure(ev, label: str, say) -> dict | None:
    """A reference point's metrics, speed measured and per-unit values under "units";
    None (said) when the model's shapes cannot take that config."""
    resolved = reference_plan(ev, label)
    if resolved is None:
        say(f"baseline {label}: skipped, no layer's shape can take {label}")
        return None
    say(f"baseline {label}: evaluating")
    metrics = {**ev.run(resolved, speed=True), "speed_source": "measured"}
    say(f"baseline {label}: {ev.task.metric} {metrics[ev.task.metric]:.4g}, "
        f"{metrics['size_mib']:.1f} MiB, {metrics['bits_per_weight']:.2f} b/w")
    return metrics


class References:
    def __init__(self, session: Session):
        self.session = session
        self.units_of: dict[str, list[float]] = {}   # label -> units, read by `load_units`

    @property
    def key(self) -> str:
        s, ev = self.session.s, self.session.ev
        ident = [s.eval.model, s.eval.checkpoint, ev.task.name, ev.protocol, str(ev.dtype),
                 ev.device.type, ev.backend]
        return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]

    def _shared(self, kind: str) -> Path:
        return self.session.out / "baselines" / f"{kind}-{self.key}.json"

    # ---- baselines -----------------------------------------------------------------
    def stored(self) -> dict:
        return dict(contract.attr(self.session.study.user_attrs, contract.BASELINES, {}))

    def _store(self, have: dict) -> None:
        self.session.study.set_user_attr(contract.BASELINES, have)
        write_json(self.session.dir / contract.BASELINES_FILE, have)

    def baselines(self) -> dict:
        """fp + the space's uniform configs: measured if no study under this --out has
        them yet, then stored with this study too."""
        session = self.session
        path = self._shared("baselines")
        shared = json.loads(path.read_text()) if path.exists() else {}
        have = {**shared, **self.stored()}
        for label in [FP] + [c.label for c in session.space.baselines]:
            if label in have or (metrics := measure(session.ev, label, session.say)) is None:
                continue
            self.save_units(label, metrics.pop("units"))
            have = {**have, **self.stored(), label: metrics}
            self._store(have)
            write_json(path, have)
        have = {**have, **self.stored()}
        self._store(have)
        return have

    # ---- per-unit values --------------------------------------------------------------
    def save_units(self, label: str, units: list[float]) -> None:
        path = self._shared("units")
        known = json.loads(path.read_text()) if path.exists() else {}
        write_json(path, {**known, label: units})

    def load_units(self) -> dict[str, list[float]]:
        """The reference configs' units (the fp model's scored once if missing)."""
        path = self._shared("units")
        self.units_of = json.loads(path.read_text()) if path.exists() else {}
        if FP not in self.units_of:
            ev = self.session.ev
            self.session.say("scoring the unquantized model per window (reference for "
                             "early stopping)")
            self.save_units(FP, ev.run({n: None for n in ev.shapes}, speed=False)["units"])
            self.units_of = json.loads(path.read_text())
        return self.units_of

    def units(self) -> dict[str, list[float]]:
        """Every config scored on all the data, per unit: the baselines, and the
        study's trials scored in full (directly, or rescored as front configs)."""
        refs = dict(self.units_of)
        study, total = self.session.study, self.session.ev.total
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            units = contract.attr(t.user_attrs, contract.UNITS, ())
            if len(units) == total:
                refs[f"trial {t.number}"] = units
        for number, entry in contract.attr(study.user_attrs, contract.RESCORED, {}).items():
            refs[f"trial {number}"] = entry["units"]
        return refs
