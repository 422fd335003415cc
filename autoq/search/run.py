"""`autoq search`: a resumable multi-objective Optuna study over per-layer configs.

Objectives: model size (MiB, minimise) and quality (ppl minimise / accuracy
maximise), with the quality target (and optional --max-size-mib) as Optuna
constraints. The study starts from measured baselines and sensitivity-seeded
configs, then a sampler (`sampler.py`, default: the recalibrated sensitivity
model) explores. Every trial reuses the process's quantized-layer cache and
stops scoring as soon as the data seen decides the target either way
(`autoq.estimate`): clearly worse trials are pruned, clearly better ones complete
with an estimated metric, and configs that end on the Pareto front are scored on
all the data before anything is written. The study folder gets trials.jsonl,
pareto.json, one plan per Pareto config and best.json, all written atomically.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import TrialState

from ..errors import UserError
from ..estimate import Estimate, estimate
from ..evaluate import EvalSettings, Evaluator
from ..io import write_atomic, write_json
from ..pareto import front_indices
from ..plan import LayerConfig, Plan, uniform_plan
from ..tasks import LINK, count
from . import seed as seeding
from .sampler import SAMPLERS, SamplerInputs
from .sensitivity import measure_or_load
from . import storage as store
from .space import load_space, parse_option

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
optuna.logging.set_verbosity(optuna.logging.WARNING)
MAX_FAILS_IN_A_ROW = 5
DEFAULT_SPACE = {"lm": "llama-per-layer", "vit": "vit-per-layer"}


@dataclass(frozen=True)
class SearchSettings:
    eval: EvalSettings
    target: float
    target_metric: str                 # "ppl" or "accuracy"
    trials: int = 50
    max_size_mib: float | None = None
    timeout: float | None = None
    space: str | None = None
    study: str | None = None
    storage: str | None = None
    out: str = "results"
    seed: int = 0
    n_seeds: int | None = None
    speed: str = "predicted"           # or "measured" (every trial)
    prune: bool = True                 # stop scoring a trial once the target is decided
    sampler: str = "sensitivity"
    measure_front: int | None = None   # Pareto configs whose speed is re-measured (None: all)
    all_options: bool = False          # with gemlite: also options it cannot serve


@dataclass
class Outcome:
    study_dir: Path
    finished: int
    front: list[dict] = field(default_factory=list)
    best: dict | None = None


def study_name(s: SearchSettings) -> str:
    base = f"{s.eval.model}-{s.eval.task or 'default'}-{s.target_metric}{s.target:g}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("_")


def trial_record(t: optuna.trial.FrozenTrial, target_ok: Callable[[dict], bool],
                 metrics: dict) -> dict:
    rec = {"number": t.number, "state": t.state.name, "origin": t.user_attrs.get("origin", "sampler"),
           "layers": t.user_attrs.get("layers", {}), "metrics": metrics,
           "feasible": t.state == TrialState.COMPLETE and target_ok(metrics)}
    for key in ("duplicate_of", "pruned_at", "retry_of", "surplus"):
        if key in t.user_attrs:
            rec[key] = t.user_attrs[key]
    if t.state == TrialState.FAIL:
        rec["fail_reason"] = t.user_attrs.get("fail_reason", "unknown")
    return rec


class Search:
    def __init__(self, s: SearchSettings, say: Callable[[str], None] = lambda m: None):
        self.s, self.say = s, say
        if s.sampler not in SAMPLERS:
            raise UserError(f"--sampler {s.sampler!r}: use one of {', '.join(SAMPLERS)}.")
        if s.storage:
            store.check_url(s.storage)  # a typo fails before the model loads
        self.beat_s, self.grace_s = store.timing()
        self.ev = Evaluator(s.eval)
        self.ev.fast_scoring = self.ev.device.type == "cpu"  # HQQ's CPU forward unpacks per call
        self.task = self.ev.task
        if self.task.metric != s.target_metric:
            flag = "--target-ppl" if self.task.metric == "ppl" else "--target-acc"
            raise UserError(f"task {self.task.name} measures {self.task.metric}; give {flag}.")
        self.metric = self.task.metric
        self.speed_key = "tokens_per_s" if self.ev.loaded.kind == "lm" else "images_per_s"
        self.space = load_space(s.space or DEFAULT_SPACE[self.ev.loaded.kind])
        self.choices, self.fixed = self.space.bind(self.ev.shapes, self._allowed())
        self.name = s.study or study_name(s)
        self.dir = Path(s.out) / self.name
        # nothing is written before here: a bad model, data, space or storage leaves no trace
        if s.storage is None:
            self.dir.mkdir(parents=True, exist_ok=True)
        self.storage_url = s.storage or f"sqlite:///{self.dir.resolve()}/study.db"
        self.storage = store.open_storage(self.storage_url)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.study = self._open_study()
        self.latency = None
        self.early = False                 # early stopping on (the target is reachable)
        self.max_bits: float | None = None  # --max-size-mib for the searched layers
        self.bits: dict | None = None
        self.reference_units: dict[str, list[float]] = {}

    # ---- setup ----------------------------------------------------------------------
    def _allowed(self):
        """Options kept per layer: with gemlite, only what gemlite serves itself
        (unless --all-options), so no searched layer silently falls back."""
        if self.ev.backend == "hqq" or self.s.all_options:
            return lambda cfg, fin, fout: True
        from ..backends import servable

        return servable(self.ev.backend)

    def _info(self) -> dict:
        return {"format": "autoq.study/1", "study": self.name, "storage": self.storage_url,
                "model": self.s.eval.model, "task": self.task.name, "metric": self.metric,
                "higher_is_better": self.task.higher_is_better, "target": self.s.target,
                "max_size_mib": self.s.max_size_mib, "protocol": self.ev.protocol,
                "speed_key": self.speed_key, "space": self.space.source,
                "settings": asdict(self.s.eval)}

    def _open_study(self) -> optuna.Study:
        storage = self.storage
        sampler = optuna.samplers.RandomSampler(seed=self.s.seed)  # replaced once seeded
        senses = ["minimize", "maximize" if self.task.higher_is_better else "minimize"]
        try:
            study = optuna.create_study(storage=storage, study_name=self.name, sampler=sampler,
                                        directions=senses, load_if_exists=True)
        except Exception as e:
            raise UserError(f"--storage {self.storage_url}: cannot create or open study "
                            f"{self.name!r} ({e.__class__.__name__}: {str(e)[:160]}).")
        info = self._info()
        old = study.user_attrs.get("autoq")
        if old is None:
            study.set_user_attr("autoq", info)
        else:
            for key in ("model", "task", "target", "protocol"):
                if old.get(key) != info[key]:
                    raise UserError(f"study {self.name!r} in {self.storage_url} was made with "
                                    f"{key}={old.get(key)!r}, not {info[key]!r}; use another "
                                    "--study name or the original settings.")
        write_json(self.dir / "study.json", info)
        return study

    def _n_seeds(self) -> int:
        return self.s.n_seeds if self.s.n_seeds is not None else \
            max(2, min(10, self.s.trials // 3))

    def meets(self, metrics: dict) -> bool:
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value) or not self.task.meets(value, self.s.target):
            return False
        return self.s.max_size_mib is None or metrics["size_mib"] <= self.s.max_size_mib

    def constrain(self, trial: optuna.Trial, metrics: dict) -> None:
        """Optuna constraints (feasible when <= 0): the quality target, the size cap."""
        v = metrics.get(self.metric, math.inf)
        v = v if math.isfinite(v) else (-1e9 if self.task.higher_is_better else 1e9)
        trial.set_constraint("quality", self.s.target - v if self.task.higher_is_better
                             else v - self.s.target)
        if self.s.max_size_mib is not None and "size_mib" in metrics:
            trial.set_constraint("size", metrics["size_mib"] - self.s.max_size_mib)

    # ---- plans --------------------------------------------------------------------
    def resolved(self, labels: dict[str, str]) -> dict[str, LayerConfig | None]:
        out = dict(self.fixed)
        for c in self.choices:
            cfg = parse_option(labels[c.param], "trial")
            for name in c.layers:
                out[name] = cfg
        return {n: out[n] for n in self.ev.shapes}

    def plan(self, resolved, metrics: dict, number: int | None = None) -> Plan:
        extra = {"study": self.name, "task": self.task.name, "protocol": self.ev.protocol}
        if number is not None:
            extra["trial"] = number
        if self.s.eval.checkpoint:
            extra["checkpoint"] = self.s.eval.checkpoint
        return Plan(self.s.eval.model, dict(resolved), None, dict(metrics), extra)

    # ---- reference points, sensitivity, seeds -----------------------------------------
    def baselines(self) -> dict:
        """fp + the space's uniform configs, measured once per (model, data, protocol)
        and shared by every study under the same --out (also stored with the study)."""
        shared_path = Path(self.s.out) / "baselines" / f"baselines-{self._protocol_key()}.json"
        shared = json.loads(shared_path.read_text()) if shared_path.exists() else {}
        have = {**shared, **self.study.user_attrs.get("baselines", {})}
        todo = [("fp", None)] + [(c.label, c) for c in self.space.baselines]
        for label, cfg in todo:
            if label in have:
                continue
            if cfg is None:
                resolved = {n: None for n in self.ev.shapes}
            else:
                plan = uniform_plan(self.s.eval.model, cfg, self.ev.shapes, self.ev.loaded.heads)
                if any(c and c.problem(*self.ev.shapes[n]) for n, c in plan.layers.items()):
                    continue
                resolved = plan.resolve(self.ev.shapes, self.ev.loaded.heads)
            self.say(f"baseline {label}: evaluating")
            metrics = self.ev.run(resolved, speed=True)
            self._save_units(label, metrics.pop("units"))
            metrics["speed_source"] = "measured"
            have = {**have, **self.study.user_attrs.get("baselines", {}), label: metrics}
            self.say(f"baseline {label}: {self.metric} {metrics[self.metric]:.4g}, "
                     f"{metrics['size_mib']:.1f} MiB, {metrics['bits_per_weight']:.2f} b/w")
            self.study.set_user_attr("baselines", have)
            write_json(self.dir / "baselines.json", have)
            write_json(shared_path, have)
        have = {**have, **self.study.user_attrs.get("baselines", {})}
        self.study.set_user_attr("baselines", have)
        write_json(self.dir / "baselines.json", have)
        return have

    def _units_path(self) -> Path:
        return Path(self.s.out) / "baselines" / f"units-{self._protocol_key()}.json"

    def _save_units(self, label: str, units: list[float]) -> None:
        """Per-window/per-image values of a reference config, shared like the baselines."""
        path = self._units_path()
        known = json.loads(path.read_text()) if path.exists() else {}
        write_json(path, {**known, label: units})

    def references(self) -> dict[str, list[float]]:
        """Configs scored on all the data, per unit: the baselines and every trial
        scored in full (the estimates of partly scored trials lean on these)."""
        refs = dict(self.reference_units)
        total = self.total_units
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if len(t.user_attrs.get("units", ())) == total:
                refs[f"trial {t.number}"] = t.user_attrs["units"]
        for number, entry in self.study.user_attrs.get("rescored", {}).items():
            refs[f"trial {number}"] = entry["units"]
        return refs

    def _protocol_key(self) -> str:
        ident = [self.s.eval.model, self.s.eval.checkpoint, self.task.name, self.ev.protocol,
                 str(self.ev.dtype), self.ev.device.type, self.ev.backend]
        return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]

    def sensitivity(self) -> dict:
        layer_options = {n: c.options for c in self.choices for n in c.layers}
        sens = measure_or_load(self.ev, layer_options, Path(self.s.out) / "sensitivity")
        write_json(self.dir / "sensitivity.json", sens)
        return sens

    def costs_and_bits(self, sens: dict) -> tuple[dict, dict]:
        costs, bits = {}, {}
        for c in self.choices:
            costs[c.param], bits[c.param] = {}, {}
            for cfg, label in zip(c.options, c.labels):
                costs[c.param][label] = sum(sens["layers"][n][label] for n in c.layers)
                bits[c.param][label] = sum(self._layer_bits(n, cfg) for n in c.layers)
        return costs, bits

    def _layer_bits(self, name: str, cfg: LayerConfig | None) -> float:
        fin, fout = self.ev.shapes[name]
        per = cfg.bits_per_weight(fin) if cfg else torch_bits(self.ev.dtype)
        return per * fin * fout

    def loss_scale(self, baselines: dict, sens: dict) -> float | None:
        """Fit predicted-loss units to measured log-perplexity on the uniform baselines."""
        if self.metric != "ppl" or "fp" not in baselines:
            return None
        ratios = []
        for label, m in baselines.items():
            if label == "fp":
                continue
            cost = sum(row.get(label, 0.0) for row in sens["layers"].values())
            if cost > 0 and m["ppl"] > baselines["fp"]["ppl"]:
                ratios.append(math.log(m["ppl"] / baselines["fp"]["ppl"]) / cost)
        return sorted(ratios)[len(ratios) // 2] if ratios else None

    def _max_choice_bits(self, baselines: dict) -> float | None:
        """--max-size-mib in the seeding's units: bits left for the searched layers
        once everything else (measured on the unquantized model) is counted."""
        if self.s.max_size_mib is None or "fp" not in baselines:
            return None
        searched = {n for c in self.choices for n in c.layers}
        fixed = baselines["fp"]["size_mib"] * 2**20 * 8 - sum(
            self._layer_bits(n, None) for n in searched)
        return self.s.max_size_mib * 2**20 * 8 - fixed

    def loss(self, metrics: dict, fp: float) -> float | None:
        """Quality loss against the unquantized model, in the units the sensitivity
        model predicts: log(ppl / fp ppl), or the accuracy drop."""
        v = metrics.get(self.metric)
        if v is None or not math.isfinite(v) or (self.metric == "ppl" and v <= 0):
            return None
        return math.log(v / fp) if self.metric == "ppl" else fp - v

    def enqueue_seeds(self, costs: dict, bits: dict, budget: float | None,
                      scale: float | None, max_bits: float | None) -> None:
        if self.study.user_attrs.get("seeded"):
            return
        max_cost = budget / scale if budget is not None and scale else None
        configs = seeding.seeds(costs, bits, self._n_seeds(), max_cost, max_bits)
        for cfg in configs:
            self.study.enqueue_trial(cfg, user_attrs={"origin": "seed"}, skip_if_exists=True)
        self.study.set_user_attr("seeded", len(configs))
        self.say(f"enqueued {len(configs)} seed configs from sensitivities"
                 + (f" (loss scale {scale:.3g})" if scale else ""))

    def plug_sampler(self, baselines: dict, sens: dict) -> None:
        """Seeds first (once per study), then the --sampler for every later trial."""
        costs, bits = self.costs_and_bits(sens)
        fp = baselines.get("fp", {}).get(self.metric)
        budget = None
        if fp is not None and self.task.meets(fp, self.s.target) and fp != self.s.target:
            budget = self.loss({self.metric: self.s.target}, fp)
        scale = self.loss_scale(baselines, sens)
        self.max_bits = self._max_choice_bits(baselines)
        self.bits = bits
        self.enqueue_seeds(costs, bits, budget, scale, self.max_bits)
        inputs = SamplerInputs(
            costs, bits, budget, scale=scale, max_bits=self.max_bits, seed=self.s.seed,
            loss_of=lambda t: None if fp is None else self.loss(t.user_attrs.get("metrics", {}), fp),
            population=max(4, min(16, self._n_seeds())))
        self.study.sampler = SAMPLERS[self.s.sampler](inputs)

    # ---- trials -------------------------------------------------------------------
    def objective(self, trial: optuna.Trial):
        """One trial under a heartbeat. What raises is recorded as the trial's
        fail_reason (optuna marks it FAIL); Ctrl-C re-enqueues the config first."""
        self._trial_id = trial._trial_id
        with store.heartbeat(self.storage, trial._trial_id, self.beat_s):
            try:
                return self._evaluate(trial)
            except optuna.TrialPruned:
                raise
            except KeyboardInterrupt:
                store.requeue(self.study, self.storage.get_trial(trial._trial_id))
                note(trial, "fail_reason", "interrupted (Ctrl-C); its config is enqueued again")
                raise
            except Exception as e:
                text = str(e).strip().splitlines()
                note(trial, "fail_reason", f"{e.__class__.__name__}: {text[0][:300] if text else ''}")
                raise

    def _evaluate(self, trial: optuna.Trial):
        budget_ok(self.study, trial, self.s.trials)
        labels = {c.param: trial.suggest_categorical(c.param, c.labels) for c in self.choices}
        resolved = self.resolved(labels)
        trial.set_user_attr("origin", trial.user_attrs.get("origin", "sampler"))
        trial.set_user_attr("layers", self.plan(resolved, {}).to_json()["layers"])
        dup = next((t for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if t.params == trial.params and "metrics" in t.user_attrs), None)
        if dup is not None:
            metrics = self.metrics_of(dup)
            trial.set_user_attr("duplicate_of", dup.number)
        else:
            metrics, verdict = self._score(labels, resolved)
            if verdict == "infeasible":
                self.constrain(trial, metrics)
                trial.set_user_attr("metrics", metrics)
                trial.set_user_attr("pruned_at", metrics["fraction"])
                raise optuna.TrialPruned(f"{self.metric} ~{metrics[self.metric]:.4g} after "
                                         f"{metrics['fraction']:.0%} of the data")
            trial.set_user_attr("units", metrics.pop("units"))  # a rescore continues from here
            self._add_speed(metrics, resolved)
        trial.set_user_attr("metrics", metrics)
        if not math.isfinite(metrics[self.metric]):
            raise FloatingPointError(f"{self.metric} is {metrics[self.metric]} (numerical "
                                     "overflow in the quantized model)")
        self.constrain(trial, metrics)
        return metrics["size_mib"], metrics[self.metric]

    def _score(self, labels: dict, resolved) -> tuple[dict, str | None]:
        """Score until the data seen decides the target (or all of it); the metric of
        a partly scored trial is the estimate for all the data, with its interval."""
        oversize = self.max_bits is not None and self.bits is not None and \
            sum(self.bits[p][o] for p, o in labels.items()) > self.max_bits
        last: dict = {}  # the verdict and estimate of the last check

        def stop(units: list[float]) -> bool:
            if units and not math.isfinite(units[-1]):
                last.update(verdict="nan", est=None)
                return True
            last["verdict"], last["est"] = self.judge(units, oversize)
            return last["verdict"] is not None

        metrics = self.ev.run(resolved, speed=self.s.speed == "measured",
                              check_every=self.check_every, stop=stop)
        est = last.get("est")
        if metrics["fraction"] < 1 and last.get("verdict") != "nan":
            metrics[self.metric] = LINK[self.metric](est.mean) if est else math.nan
            if est:
                metrics[f"{self.metric}_interval"] = list(self._interval(est))
                metrics["estimated_from"] = est.reference
        return metrics, last.get("verdict")

    def early_stopping(self, baselines: dict) -> bool:
        """Stop scoring trials early only when the target is reachable at all (the
        unquantized model meets it); loads (or measures once) the references' units."""
        if not self.s.prune:
            return False
        fp = baselines.get("fp", {}).get(self.metric)
        if fp is not None and not self.task.meets(fp, self.s.target):
            self.say(f"the unquantized model has {self.metric} {fp:.4g}, which misses the "
                     f"target {self.s.target:g}: no config can meet it; mapping the trade-off "
                     "with every trial scored on all the data")
            return False
        path = self._units_path()
        self.reference_units = json.loads(path.read_text()) if path.exists() else {}
        if "fp" not in self.reference_units:
            self.say("scoring the unquantized model per window (reference for early stopping)")
            self._save_units("fp", self.ev.run({n: None for n in self.ev.shapes},
                                               speed=False)["units"])
            self.reference_units = json.loads(path.read_text())
        return True

    def judge(self, units: list[float], oversize: bool) -> tuple[str | None, Estimate | None]:
        """('infeasible' | 'feasible' | None, the estimate): decided once the units seen
        put the target outside the interval (`autoq.estimate`); None: score on."""
        if oversize:
            return "infeasible", None
        if not self.early or len(units) < self.check_every:
            return None, None
        est = estimate(units, self.total_units, self.references())
        lo, hi = self._interval(est)
        worst, best = (lo, hi) if self.task.higher_is_better else (hi, lo)
        if self.task.meets(worst, self.s.target):
            return "feasible", est
        if not self.task.meets(best, self.s.target):
            return "infeasible", est
        return None, est

    def _interval(self, est) -> tuple[float, float]:
        return est.interval(LINK[self.metric])

    @property
    def check_every(self) -> int:
        return int(self.task.spec.get("check_every", 1))

    @property
    def total_units(self) -> int:
        return count(self.task, self.ev.dataset)

    def _add_speed(self, metrics: dict, resolved) -> None:
        if self.s.speed == "measured":
            metrics["speed_source"] = "measured"
            return
        if self.latency is None:
            from ..latency import LatencyModel

            options = sorted({c for c in resolved.values() if c} |
                             {o for ch in self.choices for o in ch.options if o},
                             key=lambda c: (c.nbits, c.group_size or 0))
            self.latency = LatencyModel.for_model(self.ev.loaded, options,
                                                  self.ev.backend, Path(self.s.out))
        metrics[self.speed_key] = 1.0 / self.latency.predict(resolved)
        metrics["speed_source"] = "predicted"

    # ---- the loop -------------------------------------------------------------------
    def finished(self) -> int:
        return len(self.study.get_trials(deepcopy=False, states=FINISHED))

    def run(self) -> Outcome:
        base = self.baselines()
        self.early = self.early_stopping(base)
        sens = self.sensitivity()
        self.plug_sampler(base, sens)
        start, fails, storage_errors, durations = time.time(), 0, 0, []
        try:
            while True:
                store.fail_stale(self.study, self.grace_s)  # trials of dead workers: retried
                if self.finished() >= self.s.trials:
                    break
                if self.s.timeout and time.time() - start > self.s.timeout:
                    self.say("timeout reached; stopping before the next trial")
                    break
                if not has_room(self.study, self.s.trials):
                    time.sleep(min(2.0, self.beat_s))  # other workers' trials may finish
                    continue
                t0 = time.time()
                try:
                    last = self._run_one()
                    storage_errors = 0
                except optuna.exceptions.StorageInternalError as e:  # busy or dropped database
                    storage_errors += 1
                    if storage_errors >= MAX_FAILS_IN_A_ROW:
                        raise UserError(f"--storage {self.storage_url} failed {storage_errors} "
                                        f"times in a row ({e.__class__.__name__}: "
                                        f"{str(e)[:160]}); check the database, then run the "
                                        "same command to resume.")
                    time.sleep(1.0)
                    continue
                self.write_trials()
                if last is None:
                    continue
                fails = fails + 1 if last.state == TrialState.FAIL and \
                    not last.user_attrs.get("surplus") else 0
                if fails >= MAX_FAILS_IN_A_ROW:
                    reason = last.user_attrs.get("fail_reason", "unknown")
                    raise UserError(f"{fails} trials in a row failed (last: {reason[:200]}); "
                                    "fix the cause and run the same command to resume.")
                durations.append(time.time() - t0)
                self.progress(durations, last)
        finally:
            self.write_trials()
        return self.finalize()

    def _run_one(self) -> optuna.trial.FrozenTrial | None:
        """One trial; None if another worker failed it as stale meanwhile (this
        worker looked dead: no heartbeat for GRACE_S) and so enqueued it again."""
        ran, self._trial_id = [], None
        try:
            self.study.optimize(self.objective, n_trials=1, catch=(Exception,),
                                callbacks=[lambda st, tr: ran.append(tr)])
        except Exception:
            if self._trial_id is None or \
                    self.storage.get_trial(self._trial_id).state != TrialState.FAIL:
                raise
            self.say(f"another worker took this worker's trial for a dead one (no heartbeat "
                     f"for {self.grace_s:g} s; raise AUTOQ_GRACE_S on a busy machine); its "
                     "config runs again")
            return None
        return ran[-1] if ran else None

    def progress(self, durations: list[float], last: optuna.trial.FrozenTrial) -> None:
        done = self.finished()
        left = max(0, self.s.trials - done)
        eta = left * sum(durations[-5:]) / len(durations[-5:])
        best = self.best_trial()
        best_txt = (f"best feasible {best.user_attrs['metrics']['size_mib']:.1f} MiB, "
                    f"{self.metric} {best.user_attrs['metrics'][self.metric]:.4g}"
                    if best else "no feasible config yet")
        m = last.user_attrs.get("metrics", {})
        what = (f"{self.metric} {m[self.metric]:.4g}, {m.get('size_mib', float('nan')):.1f} MiB"
                if self.metric in m else "")
        self.say(f"[{done}/{self.s.trials}] trial {last.number} {last.state.name.lower()} "
                 f"({last.user_attrs.get('origin', 'sampler')}) {what} | {best_txt} | "
                 f"ETA {eta / 60:.1f} min")

    def best_trial(self):
        rescored = self.study.user_attrs.get("rescored", {})
        ok = [(self.metrics_of(t, rescored), t) for t in
              self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        ok = [(m, t) for m, t in ok if self.meets(m)]
        return min(ok, key=lambda mt: (mt[0]["size_mib"], mt[1].number))[1] if ok else None

    def metrics_of(self, t, rescored: dict | None = None) -> dict:
        """A trial's metrics; for a partly scored config that was later scored on all
        the data (a Pareto config), the full-data ones."""
        if rescored is None:
            rescored = self.study.user_attrs.get("rescored", {})
        full = rescored.get(str(t.user_attrs.get("duplicate_of", t.number)))
        metrics = dict(t.user_attrs.get("metrics", {}))
        return {**metrics, **full["metrics"]} if full else metrics

    def write_trials(self) -> None:
        """trials.jsonl from the storage; under the folder lock, so the last writer
        among several workers also read the storage last."""
        states = FINISHED + (TrialState.FAIL,)
        with store.file_lock(self.dir / ".lock"):
            rescored = self.study.user_attrs.get("rescored", {})
            lines = [trial_record(t, self.meets, self.metrics_of(t, rescored))
                     for t in self.study.get_trials(states=states)]
            write_atomic(self.dir / "trials.jsonl", "".join(json.dumps(r) + "\n" for r in lines))

    # ---- outputs ------------------------------------------------------------------
    def finalize(self) -> Outcome:
        """Pareto plans, pareto.json and best.json. Partly scored configs on the front
        are scored on all the data first (until the front is all full-data scores),
        front speeds are measured, then the files are written under the folder lock."""
        done = [t for t in self.study.get_trials(states=(TrialState.COMPLETE,))
                if "metrics" in t.user_attrs and "duplicate_of" not in t.user_attrs]
        while True:
            rescored = self.study.user_attrs.get("rescored", {})
            front = self.front(done, rescored)
            partial = [t for t in front if self.metrics_of(t, rescored).get("fraction", 1) < 1]
            if not partial:
                break
            for t in partial:
                self.rescore(t)
            self.write_trials()
        chosen = self._to_measure(front)
        measured = [self._front_metrics(t) if i in chosen else self.metrics_of(t)
                    for i, t in enumerate(front)]
        with store.file_lock(self.dir / ".lock"):
            return self._write_front(front, measured)

    def front(self, done: list, rescored: dict) -> list:
        metrics = {t.number: self.metrics_of(t, rescored) for t in done}
        senses = ("min", "max" if self.task.higher_is_better else "min")
        pts = [(metrics[t.number]["size_mib"], metrics[t.number][self.metric]) for t in done]
        return sorted((done[i] for i in front_indices(pts, senses)),
                      key=lambda t: metrics[t.number]["size_mib"])

    def rescore(self, t) -> None:
        """Score a partly scored Pareto config on all the data; kept with the study
        (its estimate too, under `estimate`)."""
        old = t.user_attrs["metrics"]
        if str(t.number) in self.study.user_attrs.get("rescored", {}):
            return  # another worker did it
        self.say(f"scoring the rest of Pareto trial {t.number}'s data (estimated "
                 f"{self.metric} {old[self.metric]:.4g} from {old['fraction']:.0%} of it)")
        t0 = time.perf_counter()
        full = self.ev.run(trial_layers(t), speed=False, done=t.user_attrs.get("units"))
        units = full.pop("units")
        estimate_ = {k: old[k] for k in (self.metric, f"{self.metric}_interval",
                                         "estimated_from", "fraction") if k in old}
        metrics = {**{k: v for k, v in old.items() if k not in estimate_}, **full,
                   "estimate": estimate_, "rescore_seconds": time.perf_counter() - t0}
        rescored = dict(self.study.user_attrs.get("rescored", {}))
        rescored[str(t.number)] = {"metrics": metrics, "units": units}
        self.study.set_user_attr("rescored", rescored)

    def _to_measure(self, front: list) -> set[int]:
        """Front positions whose speed is re-measured: all, or (--measure-front N) the
        best config plus configs spread evenly along the front."""
        n = self.s.measure_front
        if n is None or n >= len(front):
            return set(range(len(front)))
        best = self.best_trial()
        picks = [i for i, t in enumerate(front) if best is not None and t.number == best.number]
        spread = [round(k * (len(front) - 1) / max(n - 1, 1)) for k in range(n)]
        for i in spread:
            if len(picks) < n and i not in picks:
                picks.append(i)
        return set(picks[:n])

    def _write_front(self, front: list, measured: list[dict]) -> Outcome:
        out = Outcome(self.dir, self.finished())
        best = self.best_trial()
        for i, (t, metrics) in enumerate(zip(front, measured)):
            resolved = trial_layers(t)
            plan = self.plan(resolved, metrics, t.number)
            name = f"pareto-{i:02d}.json"
            plan.save(self.dir / name)
            out.front.append({"plan": name, "number": t.number, "metrics": metrics,
                              "feasible": self.meets(metrics)})
            if best is not None and t.number == best.number:
                plan.save(self.dir / "best.json")
                out.best = {"plan": "best.json", "number": t.number, "metrics": metrics}
        if best is None:
            (self.dir / "best.json").unlink(missing_ok=True)
        info = self._info()
        write_json(self.dir / "pareto.json", {
            "study": self.name, "model": info["model"], "task": info["task"],
            "metric": self.metric, "target": self.s.target, "protocol": info["protocol"],
            "front": out.front, "best": "best.json" if out.best else None})
        for old in self.dir.glob("pareto-*.json"):  # plans of an older, longer front
            if old.name not in {f["plan"] for f in out.front}:
                old.unlink(missing_ok=True)
        return out

    def _front_metrics(self, t) -> dict:
        """Front configs: speed re-measured (not predicted), stored back in the trial."""
        metrics = self.metrics_of(t)
        if metrics.get("speed_source") == "measured":
            return metrics
        known = self.study.user_attrs.get("front_speed", {})
        if str(t.number) in known:
            return {**metrics, **known[str(t.number)]}
        resolved = trial_layers(t)
        from ..speed import measure as measure_speed

        self.say(f"measuring the speed of Pareto trial {t.number}")
        size, _ = self.ev.serve(resolved)
        measured = measure_speed(self.ev.loaded, size.size_bytes)
        measured[f"{self.speed_key}_predicted"] = metrics.get(self.speed_key)
        measured["speed_source"] = "measured"
        known = dict(self.study.user_attrs.get("front_speed", {}))
        known[str(t.number)] = measured
        self.study.set_user_attr("front_speed", known)
        return {**metrics, **measured}


def note(trial: optuna.Trial, key: str, value) -> None:
    """Set a user attr unless another worker already failed the trial as stale."""
    try:
        trial.set_user_attr(key, value)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass


def trial_layers(t: optuna.trial.FrozenTrial) -> dict[str, LayerConfig | None]:
    """A finished trial's plan (module name -> config) from its `layers` user attr."""
    return {n: None if v is None else LayerConfig(v["nbits"], v["group_size"])
            for n, v in t.user_attrs["layers"].items()}


def torch_bits(dtype) -> float:
    import torch

    return torch.finfo(dtype).bits


def budget_ok(study: optuna.Study, trial: optuna.Trial, total: int) -> None:
    """Fail (as surplus) a trial that could make more than `total` finished trials.

    Exact with any number of workers: a trial may run only while fewer than `total`
    lower-numbered trials are waiting, running or finished. Numbers follow creation
    order and states only move WAITING -> RUNNING -> finished (or FAIL), so if
    total + 1 trials finished, the highest-numbered one saw the other `total`.
    A seed that another worker enqueued too (a start-up race) is surplus as well."""
    alive = FINISHED + (TrialState.RUNNING, TrialState.WAITING)
    ahead = [t for t in study.get_trials(deepcopy=False, states=alive) if t.number < trial.number]
    mine = study._storage.get_trial_system_attrs(trial._trial_id).get("fixed_params")
    why = f"{total} trials are already finished, running or waiting" if len(ahead) >= total else \
        next((f"the same seed is trial {t.number}" for t in ahead
              if mine and t.system_attrs.get("fixed_params") == mine
              and trial.user_attrs.get("origin") == "seed" == t.user_attrs.get("origin")),
             None)
    if why:
        trial.set_user_attr("surplus", True)
        raise SurplusTrial(why)


class SurplusTrial(Exception):
    pass


def has_room(study: optuna.Study, total: int) -> bool:
    """Another trial may start: finished + running < total."""
    busy = study.get_trials(deepcopy=False, states=FINISHED + (TrialState.RUNNING,))
    return len(busy) < total
