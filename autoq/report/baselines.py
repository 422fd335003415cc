"""`autoq report --baselines`: evaluate the uniform reference points a study is
missing, with the study's own protocol (study.json "settings"), and store them
with the study (baselines.json, written atomically, and the storage's
"baselines" user attr). The only part of `autoq report` that writes to a study.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .. import study as contract
from ..errors import UserError
from ..io import write_json
from ..quant import FP
from ..search.references import measure
from ..progress import say
from .data import Study

# 8/4/3/2-bit at the common group sizes; a config the model's shapes cannot take is skipped
UNIFORM = ("8:64", "4:64", "4:128", "3:64", "3:128", "2:32", "2:64")


def missing(study: Study) -> list[str]:
    return [label for label in (FP, *UNIFORM) if label not in study.baselines]


def fill(study: Study) -> dict[str, dict]:
    """Evaluate and store the missing reference points; returns the new ones."""
    from ..pipeline.evaluator import EvalSettings, Evaluator

    todo = missing(study)
    if not todo:
        return {}
    settings = study.meta.get("settings")
    if not isinstance(settings, dict):
        raise UserError(f"{study.source}: study {study.name!r} has no \"settings\" in its "
                        "study.json, so its protocol cannot be re-run; run --baselines on a "
                        "study written by a current `autoq search`.")
    known = {f.name for f in dataclasses.fields(EvalSettings)}
    ev = Evaluator(EvalSettings(**{k: v for k, v in settings.items() if k in known}))
    if study.meta.get("protocol") and ev.protocol != study.meta["protocol"]:
        raise UserError(f"{study.name}: its settings now give the protocol {ev.protocol!r}, not "
                        f"the study's {study.meta['protocol']!r}; check the data in its settings.")
    new = {}
    for label in todo:
        metrics = measure(ev, label, say)
        if metrics is not None:
            metrics.pop("units")
            new[label] = metrics
    store(study, new)
    return new


def store(study: Study, new: dict[str, dict]) -> None:
    """Merge `new` into the study's baselines: the storage's user attr, then baselines.json."""
    if not new:
        return
    merged = {**study.baselines, **new}
    name = str(study.meta.get("study") or study.name)
    if study.folder is None:  # read from a storage: that is where they live
        _set_attr(study.source, name, merged)
    elif study.meta.get("storage"):
        try:
            _set_attr(str(study.meta["storage"]), name, merged)
        except UserError as e:
            say(f"baselines not stored in the study's storage ({e}); baselines.json has them")
    if study.folder is not None:
        path = Path(study.folder) / contract.BASELINES_FILE
        try:  # a live search may have added points meanwhile: keep them
            merged = {**json.loads(path.read_text()), **new}
        except (OSError, json.JSONDecodeError):
            pass
        write_json(path, merged)
    study.baselines = merged


def _set_attr(url: str, name: str, baselines: dict) -> None:
    import optuna

    from ..search.storage import open_existing

    try:
        study = optuna.load_study(study_name=name, storage=open_existing(url))
    except KeyError:
        raise UserError(f"{url}: has no study {name!r}; check study.json's storage and study.")
    study.set_user_attr(contract.BASELINES, baselines)
