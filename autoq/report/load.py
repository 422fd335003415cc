"""Read studies for `autoq report`: study folders written by `autoq search`, or an
Optuna storage (sqlite:///..., postgresql://..., a journal file).

Reading never writes: a folder is read file by file (a trials.jsonl line that
does not parse, e.g. one being appended right now, is skipped), and a storage is
opened without creating tables or files, so a report is safe alongside a live
search.

Study folder contract (`<out>/<study>/`): study.json, baselines.json,
trials.jsonl, pareto.json, pareto-NN.json and best.json (autoq.plan/1 files), and
oneshot.json (the one-shot plans; studies before them have none).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import study as contract
from ..errors import UserError
from ..plan import FORMAT as PLAN_FORMAT
from ..plan import Plan
from ..search.storage import open_existing
from .data import Study, Trial

STATES = ("COMPLETE", "PRUNED", "FAIL")


def _json(path: Path, default: Any = None) -> Any:
    if not path.exists() and default is not None:
        return default
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not readable JSON ({e.__class__.__name__}); fix or remove the "
                        "file.")


def _layers(obj: Any) -> dict | None:
    """Validated {name: {"nbits", "group_size"} | None}, or None when malformed."""
    try:
        plan = Plan.from_json({"format": PLAN_FORMAT, "model": "-", "layers": obj})
    except UserError:
        return None
    return {k: (c.to_json() if c else None) for k, c in plan.layers.items()}


def _trial(obj: Any, origin: str = "sampler") -> Trial | None:
    """A trial record, or None when it is not one (a half-written line, an old format)."""
    if not isinstance(obj, dict) or obj.get("state") not in STATES:
        return None
    layers = _layers(obj.get("layers", {}))
    metrics = obj.get("metrics") or {}
    number, dup = obj.get("number"), obj.get("duplicate_of")
    if layers is None or not isinstance(metrics, dict) or \
            not all(v is None or isinstance(v, int) for v in (number, dup)):
        return None
    return Trial(number, obj["state"], contract.origin({"origin": obj.get("origin") or origin}),
                 layers, metrics, duplicate_of=dup)


def read_trials(path: Path) -> list[Trial]:
    """trials.jsonl, skipping lines that do not parse; a later line for the same trial
    number replaces an earlier one."""
    if not path.exists():
        return []
    by_number: dict[Any, Trial] = {}
    for i, line in enumerate(path.read_text(errors="replace").splitlines()):
        try:
            t = _trial(json.loads(line))
        except json.JSONDecodeError:
            continue
        if t is not None:
            by_number[t.number if t.number is not None else f"line{i}"] = t
    return list(by_number.values())


def _plan_trial(folder: Path, file: str, number: Any, metrics: Any,
                trials: dict[int, Trial]) -> Trial | None:
    path = folder / file
    try:
        plan = Plan.load(path)
    except UserError:
        if not path.exists():  # removed by a search rewriting its plans
            return None
        raise
    if isinstance(number, int) and plan.extra.get("trial", number) != number:
        return None  # the search is rewriting its plans right now
    layers = {k: (v.to_json() if v else None) for k, v in plan.layers.items()}
    if not isinstance(number, int):  # best.json: its "trial", or the trial with its layers
        number = plan.extra.get("trial")
        if not isinstance(number, int):
            number = next((t.number for t in trials.values() if t.layers == layers), None)
    known = trials.get(number)
    return Trial(number, "COMPLETE", known.origin if known else "?", layers,
                 dict(metrics) if isinstance(metrics, dict) and metrics else plan.metrics, file)


def read_folder(folder: Path) -> Study:
    meta = _json(folder / contract.STUDY_FILE)
    if not isinstance(meta, dict) or meta.get("format") != contract.FORMAT:
        raise UserError(f"{folder / contract.STUDY_FILE}: not an {contract.FORMAT} file; give a "
                        "folder written by `autoq search`.")
    baselines = _json(folder / contract.BASELINES_FILE, {})
    trials = read_trials(folder / contract.TRIALS_FILE)
    by_number = {t.number: t for t in trials if t.number is not None}
    pareto = _json(folder / contract.PARETO_FILE, {})
    pareto = pareto if isinstance(pareto, dict) else {}
    front = best = None
    if isinstance(pareto.get("front"), list):
        entries = [e for e in pareto["front"] if isinstance(e, dict)
                   and isinstance(e.get("plan"), str)]
        front = [t for e in entries if (t := _plan_trial(folder, e["plan"], e.get("number"),
                                                         e.get("metrics"), by_number))]
        for t in front:  # the search re-measured the Pareto configs' speed
            if t.number in by_number:
                by_number[t.number].metrics = {**by_number[t.number].metrics, **t.metrics}
    if isinstance(pareto.get("best"), str) or (folder / contract.BEST_FILE).exists():
        best = _plan_trial(folder, pareto.get("best") or contract.BEST_FILE, None, None,
                           by_number)
    oneshot = _json(folder / contract.ONESHOT_FILE, {})
    return Study(str(meta.get("study") or folder.name), meta,
                 baselines if isinstance(baselines, dict) else {}, trials, front, best,
                 source=str(folder), folder=folder, oneshot=_oneshot(oneshot))


def _oneshot(obj: Any) -> dict[str, dict]:
    """The one-shot plans that carry metrics (label -> entry)."""
    if not isinstance(obj, dict):
        return {}
    return {str(k): v for k, v in obj.items()
            if isinstance(v, dict) and isinstance(v.get("metrics"), dict)}


# ---- Optuna storages ----------------------------------------------------------------------
def _mapping(x: Any) -> dict:
    return dict(x) if isinstance(x, dict) else {}


def storage_url(source: str) -> str:
    """A file argument that is an sqlite database becomes sqlite:///path."""
    p = Path(source)
    if "://" not in source and p.is_file():
        with open(p, "rb") as f:
            if f.read(16) == b"SQLite format 3\x00":
                return f"sqlite:///{p}"
    return source


def read_storage(url: str, only: str | None = None) -> list[Study]:
    """Every autoq study in the storage (the ones with an "autoq" user attr), or `only`."""
    import optuna

    storage = open_existing(url)
    try:
        summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    except Exception as e:
        raise UserError(f"{url}: not a readable Optuna storage ({e.__class__.__name__}); give a "
                        "storage written by `autoq search`.")
    names = [s.study_name for s in summaries
             if isinstance(contract.attr(s.user_attrs, contract.INFO), dict)
             and (only is None or s.study_name == only)]
    if only is not None and not names:
        raise UserError(f"{url}: no autoq study named {only!r}; it has "
                        f"{', '.join(s.study_name for s in summaries) or 'no studies'}.")
    out = []
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage)
        attrs = study.user_attrs
        rescored = _mapping(contract.attr(attrs, contract.RESCORED))  # scored in full
        measured = _mapping(contract.attr(attrs, contract.FRONT_SPEED))  # re-measured speeds
        reported = _mapping(contract.attr(attrs, contract.REPORT))  # report-split numbers
        trials = []
        for ft in study.get_trials(deepcopy=False):
            a = ft.user_attrs
            dup = contract.attr(a, contract.DUPLICATE_OF)
            metrics = contract.overlay(_mapping(contract.attr(a, contract.METRICS)),
                                       _mapping(rescored.get(str(ft.number if dup is None
                                                                 else dup))) or None,
                                       _mapping(measured.get(str(ft.number))) or None)
            if _mapping(reported.get(str(ft.number))):
                metrics["report"] = _mapping(reported[str(ft.number)])
            t = _trial({"number": ft.number, "state": ft.state.name,
                        "origin": contract.origin(a), "layers": contract.attr(a, contract.LAYERS, {}),
                        "metrics": metrics, "duplicate_of": dup})
            if t is not None:
                trials.append(t)
        out.append(Study(name, dict(contract.attr(attrs, contract.INFO)),
                         _mapping(contract.attr(attrs, contract.BASELINES)), trials, source=url,
                         oneshot=_oneshot(contract.attr(attrs, contract.ONESHOT))))
    return out


# ---- what the user named ---------------------------------------------------------------
def study_folders(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob(contract.STUDY_FILE))


def find_studies(sources: list[str], only: str | None = None,
                 default_root: Path = Path("results")) -> list[Study]:
    """Studies named by folders or storages; none named: every study folder under results/."""
    if not sources:
        folders = study_folders(default_root) if default_root.is_dir() else []
        if not folders:
            raise UserError(f"no study folders under {default_root}/; run `autoq search` first "
                            "or name a study folder or storage URL.")
        return _only([read_folder(f) for f in folders], only)
    studies: list[Study] = []
    for source in sources:
        url, p = storage_url(source), Path(source)
        if "://" in url or p.is_file():
            studies += read_storage(url, only)
        elif p.is_dir():
            folders = [p] if (p / contract.STUDY_FILE).exists() else study_folders(p)
            if not folders:
                raise UserError(f"{p}: no study.json in it or below; give a folder written by "
                                "`autoq search`.")
            studies += _only([read_folder(f) for f in folders], only)
        else:
            raise UserError(f"{source}: no such study folder, storage file or URL; give a study "
                            "folder, sqlite:///path/study.db or a journal file.")
    return _unique_names(studies)


def _only(studies: list[Study], only: str | None) -> list[Study]:
    if only is None:
        return studies
    picked = [s for s in studies if s.name == only]
    if not picked:
        raise UserError(f"--study {only}: none of the studies found is named so; they are "
                        f"{', '.join(s.name for s in studies)}.")
    return picked


def _unique_names(studies: list[Study]) -> list[Study]:
    seen: dict[str, int] = {}
    for s in studies:
        seen[s.name] = seen.get(s.name, 0) + 1
        if seen[s.name] > 1:
            s.name = f"{s.name} ({seen[s.name]})"
    return studies
