"""The study as `autoq report` sees it, and its protocol groups: pure data.

Nothing here draws, prints or writes: a Study (read by load.py) goes in; the
studies grouped by protocol, the search's Pareto plans and best config, and the
numbers of a plan on either split come out. panels.py turns a group into plot
panels, heatmap.py a plan into a bit-allocation matrix, rows.py and gap.py make
the table rows; the drawers (draw_png.py, draw_html.py, tables.py) only draw.

Front rule (autoq/study.py, the same as the search's): a point dominates
another when it is at least as good in both objectives and strictly better in
one. Equal points do not dominate each other, so ties all stay on the front.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from ..quant import FP
from ..study import best as best_of
from ..study import front as front_by
from ..study import number
from ..metrics import Target

SIGNAL_NAME = {"sensitivity": "one-shot: sensitivity knapsack",
               "single-layer-kl": "one-shot: single-layer-KL knapsack"}


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "study"


# ---- the study, as read from a folder or a storage ---------------------------------
@dataclass
class Trial:
    number: int | None
    state: str                    # COMPLETE, PRUNED or FAIL
    origin: str                   # prior, sampler or uniform
    layers: dict                  # full module name -> {"nbits", "group_size"} or None (fp)
    metrics: dict                 # search split; the report split under "report"
    plan: str | None = None       # plan file the search wrote for it (pareto-NN.json, best.json)
    duplicate_of: int | None = None  # same config as an earlier trial (not drawn twice)


@dataclass
class Study:
    name: str
    meta: dict                            # study.json (or the storage's "autoq:study" attr)
    baselines: dict[str, dict]            # "fp", "4:64", ... -> metrics (report under "report")
    trials: list[Trial]
    front: list[Trial] | None = None      # the search's Pareto plans (pareto.json), if written
    best: Trial | None = None             # best.json, if written
    source: str = ""                      # folder or storage URL it was read from
    folder: Path | None = None
    oneshot: dict[str, dict] = field(default_factory=dict)  # oneshot.json: label -> plan

    @property
    def metric(self) -> str:
        return self.meta.get("metric", "ppl")

    @property
    def higher_is_better(self) -> bool:
        return bool(self.meta.get("higher_is_better", self.metric == "accuracy"))

    @property
    def target(self) -> float | None:
        return number(self.meta.get("target"))

    @property
    def goal(self) -> Target:
        """The study's quality target and size cap, as the search judged them."""
        return Target(self.metric, self.target, self.higher_is_better,
                      number(self.meta.get("max_size_mib")))

    @property
    def objective(self) -> str:
        """What the search minimised beside quality: "size" (default) or "latency"."""
        return "latency" if self.meta.get("objective") == "latency" else "size"

    @property
    def x_key(self) -> str:
        """The metrics key of that objective (the search's front and best.json are by it)."""
        return "latency_ms" if self.objective == "latency" else "size_mib"

    @property
    def task_metric(self) -> str:
        """The task's own metric (ppl or accuracy), also when the study targets KL."""
        if self.metric != "kld":
            return self.metric
        for m in [*self.baselines.values(), *(t.metrics for t in self.trials)]:
            for key in ("ppl", "accuracy"):
                if key in m:
                    return key
        return "ppl"

    @property
    def metrics_shown(self) -> list[str]:
        """The target's metric first, then the other one (KL beside ppl, ppl beside KL)."""
        return [self.metric, "kld" if self.metric != "kld" else self.task_metric]

    @property
    def blocks(self) -> list[str] | None:
        """The model's block prefixes, as the search found them (None: older studies)."""
        blocks = (self.meta.get("structure") or {}).get("blocks")
        return blocks if isinstance(blocks, list) else None

    @property
    def speed_key(self) -> str:
        return self.meta.get("speed_key", "tokens_per_s")

    @property
    def fp_speed(self) -> float | None:
        return number(self.baselines.get(FP, {}).get(self.speed_key))

    def quality(self, metrics: Mapping, split: str = "search",
                metric: str | None = None) -> float | None:
        return number(split_metrics(metrics, split).get(metric or self.metric))

    def complete(self) -> list[Trial]:
        """Finished trials with full metrics, each config once."""
        return [t for t in self.trials if t.state == "COMPLETE" and t.duplicate_of is None]

    def meets(self, metrics: Mapping) -> bool:
        """The quality target (and the study's size limit, if any)."""
        return self.goal.meets(metrics)

    def report_protocol(self) -> str | None:
        """The report split's protocol, from any plan or reference point scored on it."""
        plans = self.front if self.front is not None else self.trials   # a storage: no files
        found = [*(t.metrics for t in plans), *self.baselines.values(),
                 *({"report": e.get("report")} for e in self.oneshot.values())]
        for m in found:
            p = split_metrics(m, "report").get("protocol")
            if isinstance(p, str):
                return p
        return None

    def plan_path(self, plan: str | None, cwd: Path | None = None) -> str | None:
        """A plan file of the study as the user at `cwd` (default: here) types it: relative
        when it lies below, else absolute; ready for `autoq apply`."""
        if not plan or self.folder is None:
            return plan
        path = (Path(self.folder) / plan).absolute()
        here = (cwd or Path.cwd()).absolute()
        try:
            return str(path.relative_to(here))
        except ValueError:
            return os.path.normpath(path)


def split_metrics(metrics: Mapping, split: str) -> Mapping:
    """A plan's numbers on one split: the metrics themselves (search), or their
    "report" sub-object (empty when the plan was not scored on a report split)."""
    if split == "search":
        return metrics
    report = metrics.get("report")
    return report if isinstance(report, Mapping) else {}


def source_of(metrics: Mapping, key: str) -> str | None:
    """"predicted" or "measured" for a speed (`key` tokens_per_s / images_per_s) or a
    latency (latency_ms; predicted by the latency model unless it says otherwise)."""
    if key == "latency_ms":
        return metrics.get("latency_source", "predicted")
    return metrics.get("speed_source")


def speedup(metrics: Mapping, study: Study) -> float | None:
    """A plan's speed over the unquantized model's."""
    speed, fp = number(metrics.get(study.speed_key)), study.fp_speed
    return speed / fp if speed is not None and fp else None


def on_cpu(metrics: Mapping) -> bool:
    return metrics.get("device") == "cpu" or "cpu" in str(metrics.get("speed_protocol", ""))


# ---- which configs the search chose ------------------------------------------------------
def pareto_trials(study: Study) -> list[Trial]:
    """The search's Pareto plans (pareto.json); without them, as the search makes it: the
    front of the complete trials by the objective (size, or latency) and quality."""
    if study.front is not None:
        return study.front
    return front_by([(t, t.metrics) for t in study.complete()], study.goal, x=study.x_key)


def best_trial(study: Study) -> Trial | None:
    """best.json; without it, as the search picks it: the smallest (fastest, for a
    latency study) COMPLETE trial that meets the target (ties: the better, then the earlier)."""
    if study.best is not None:
        return study.best
    return best_of([(t, t.metrics) for t in study.complete()], study.goal,
                   number_of=lambda t: t.number, x=study.x_key)


def same(a: Trial, b: Trial | None) -> bool:
    return b is not None and (a.number is not None and a.number == b.number
                              or a.layers == b.layers)


# ---- protocol groups: studies whose numbers may share an axis ----------------------------
@dataclass(frozen=True)
class Protocol:
    model: str
    task: str
    split: str                 # the search split's protocol string (windows/images in it)
    seq_len: int | None
    limit: int | None

    @classmethod
    def of(cls, study: Study) -> "Protocol":
        settings = study.meta.get("settings") if isinstance(study.meta.get("settings"),
                                                            dict) else {}
        return cls(str(study.meta.get("model", "?")), str(study.meta.get("task", "?")),
                   str(study.meta.get("protocol", "?")), settings.get("seq_len"),
                   settings.get("limit"))

    def digest(self) -> str:
        ident = repr((self.model, self.task, self.split, self.seq_len, self.limit))
        return hashlib.sha256(ident.encode()).hexdigest()[:6]

    def text(self) -> str:
        extra = [f"seq-len {self.seq_len}" if self.seq_len and f"x {self.seq_len} "
                 not in self.split else ""]
        return "; ".join(filter(None, [self.split, *extra]))


@dataclass
class Group:
    protocol: Protocol
    studies: list[Study]
    stem: str                  # file names of the group's pictures start with it


def groups(studies: Sequence[Study]) -> list[Group]:
    """Studies grouped by protocol (model, task, search split, windows/images, seq-len),
    in the order first seen. Each group's pictures are named `<model>-<task>`, with a
    short hash of the protocol when two groups of one model and task are drawn."""
    by: dict[Protocol, list[Study]] = {}
    for s in studies:
        by.setdefault(Protocol.of(s), []).append(s)
    names = {p: slug(f"{p.model.rstrip('/').rsplit('/', 1)[-1]}-{p.task}") for p in by}
    clash = {n for n in names.values() if list(names.values()).count(n) > 1}
    return [Group(p, ss, f"{names[p]}-{p.digest()}" if names[p] in clash else names[p])
            for p, ss in by.items()]
