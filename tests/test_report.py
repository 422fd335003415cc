"""`autoq report`: data steps (fronts, ties, heatmap matrices), reading study folders
and Optuna storages, atomic outputs, and the command through CliRunner."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoq.cli import app
from autoq.quant import LayerConfig
from autoq.plan import Plan
from autoq.report import heatmap, load, panels, rows
from autoq import study as contract
from autoq.study import front_of
from autoq.report.data import Study, Trial
from autoq.report.heatmap import FP_BITS

runner = CliRunner()
ROLES = {"self_attn.q_proj": (64, 64), "self_attn.k_proj": (64, 32), "self_attn.v_proj": (64, 32),
         "self_attn.o_proj": (64, 64), "mlp.gate_proj": (64, 128), "mlp.up_proj": (64, 128),
         "mlp.down_proj": (128, 64)}
OPTIONS = [LayerConfig(8, 64), LayerConfig(4, 64), LayerConfig(4, 32), LayerConfig(3, 64),
           LayerConfig(2, 32), None]


# ---- a synthetic study folder, written by hand the way `autoq search` writes it ----------
def layer_names(blocks: int) -> list[str]:
    return [f"model.layers.{b}.{r}" for b in range(blocks) for r in ROLES] + ["lm_head"]


def fake_metrics(layers: dict, seed: int) -> dict:
    """Size, ppl and speed that behave like the real thing: fewer bits, smaller, worse."""
    rng = random.Random(seed)
    bits = params = penalty = 0.0
    for name, cfg in layers.items():
        fin, fout = ROLES.get(name.split(".", 3)[-1], (64, 128))
        c = LayerConfig(**cfg) if cfg else None
        per = c.bits_per_weight(fin) if c else 16
        bits, params = bits + per * fin * fout, params + fin * fout
        penalty += 0 if c is None else 1e-5 * 4 ** (8 - c.nbits) * (1 + 32 / c.group_size)
    size = (bits / 8 + 100_000) / 2**20
    penalty *= 21 / max(len(layers) - 1, 1)  # as much damage whatever the depth
    return {"ppl": 20 * math.exp(penalty) * (1 + 0.01 * rng.random()), "size_mib": size,
            "bits_per_weight": bits / params, "model_bits_per_weight": bits / params,
            "tokens_per_s": 3000 / size * (1 + 0.1 * rng.random()), "eval_seconds": 1.0,
            "speed_source": "predicted"}


def uniform_layers(blocks: int, cfg: LayerConfig | None) -> dict:
    return {n: (None if n == "lm_head" or cfg is None else cfg.to_json())
            for n in layer_names(blocks)}


def write_study(root: Path, name: str = "tiny-wikitext2", blocks: int = 3, n: int = 40,
                seed: int = 0, target: float = 22.0, storage: str = "") -> Path:
    rng = random.Random(seed)
    folder = root / name
    folder.mkdir(parents=True)
    meta = {"format": "autoq.study/1", "study": name, "storage": storage, "model": "tiny-llama",
            "task": "wikitext2", "metric": "ppl", "higher_is_better": False, "target": target,
            "protocol": "wikitext2 test, 4 windows x 32 tokens (non-overlapping), "
                        "ppl=exp(mean NLL)", "speed_key": "tokens_per_s"}
    (folder / "study.json").write_text(json.dumps(meta))
    baselines = {"fp": {**fake_metrics(uniform_layers(blocks, None), 0),
                        "speed_source": "measured"}}
    for label in ("8:64", "4:64", "3:64", "2:32"):
        baselines[label] = fake_metrics(uniform_layers(blocks, LayerConfig.parse(label)), 1)
    (folder / "baselines.json").write_text(json.dumps(baselines))
    trials = []
    for i in range(n):
        base = rng.choice(OPTIONS[:4])  # like a search: mostly one config, some changed
        layers = {name_: (None if name_ == "lm_head" else (c.to_json() if (
            c := rng.choice(OPTIONS) if rng.random() < 0.3 else base) else None))
            for name_ in layer_names(blocks)}
        state = "COMPLETE" if i % 7 else "PRUNED"
        metrics = fake_metrics(layers, i) if state == "COMPLETE" else \
            {"ppl": 90.0, "fraction": 0.25}
        trials.append({"number": i, "state": state, "origin": "seed" if i < 4 else "sampler",
                       "layers": layers, "metrics": metrics,
                       "feasible": state == "COMPLETE" and metrics["ppl"] <= target})
    lines = [json.dumps(t) for t in trials] + ['{"number": 99, "state": "COMP']  # torn line
    (folder / "trials.jsonl").write_text("\n".join(lines) + "\n")
    study = load.read_folder(folder)
    front = rows.pareto_trials(study)  # no pareto.json yet: the size front from the trials
    entries = []
    for i, t in enumerate(front):
        metrics = {**t.metrics, "tokens_per_s": t.metrics["tokens_per_s"] * 0.5,
                   "speed_source": "measured"}
        Plan("tiny-llama", {k: v and LayerConfig(**v) for k, v in t.layers.items()}, None,
             metrics, {"trial": t.number}).save(folder / f"pareto-{i:02d}.json")
        entries.append({"plan": f"pareto-{i:02d}.json", "number": t.number, "metrics": metrics})
    best = rows.best_trial(study)
    if best is not None:
        Plan("tiny-llama", {k: v and LayerConfig(**v) for k, v in best.layers.items()}, None,
             best.metrics, {"trial": best.number}).save(folder / "best.json")
    (folder / "pareto.json").write_text(json.dumps({
        "study": name, "model": "tiny-llama", "task": "wikitext2", "metric": "ppl",
        "target": target, "protocol": meta["protocol"], "front": entries,
        "best": "best.json" if best else None}))
    return folder


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


# ---- fronts ------------------------------------------------------------------------------
def test_front_from_known_points():
    pts = [(1.0, 30.0), (2.0, 25.0), (2.5, 27.0), (3.0, 20.0), (4.0, 20.0), (0.5, 50.0),
           (3.0, 21.0)]
    assert front_of(pts, (False, False)) == [5, 0, 1, 3]  # sorted by x
    # maximise x (speed), minimise y (ppl): (4, 20) beats everything with x <= 4, y >= 20
    assert front_of(pts, (True, False)) == [4]
    # maximise both (speed, accuracy)
    assert front_of([(1, 0.5), (2, 0.4), (1.5, 0.6), (0.5, 0.6)], (True, True)) == [2, 1]


def test_front_keeps_ties_and_drops_the_worse_of_equal_x():
    pts = [(2.0, 10.0), (2.0, 10.0), (2.0, 12.0), (1.0, 15.0), (3.0, 10.0)]
    # the two equal points are both on the front; (2, 12) and (3, 10) are dominated by them
    assert front_of(pts, (False, False)) == [3, 0, 1]


def test_staircase_corner_is_the_worse_of_each_coordinate():
    assert panels.staircase([(3.0, 20.0), (1.0, 30.0)], (False, False)) == \
        [(1.0, 30.0), (3.0, 30.0), (3.0, 20.0)]
    assert panels.staircase([(1.0, 20.0), (3.0, 30.0)], (True, False)) == \
        [(1.0, 20.0), (1.0, 30.0), (3.0, 30.0)]
    assert panels.staircase([], (False, False)) == []


def _study(points, target=25.0, higher=False, baselines=None) -> Study:
    meta = {"metric": "accuracy" if higher else "ppl", "higher_is_better": higher,
            "target": target, "task": "t", "model": "m", "speed_key": "tokens_per_s"}
    trials = [Trial(i, state, "sampler", {}, {("accuracy" if higher else "ppl"): q,
                                              "size_mib": s, "tokens_per_s": v})
              for i, (s, q, v, state) in enumerate(points)]
    return Study("s", meta, baselines or {}, trials)


def test_series_uses_complete_trials_once_and_the_reference_points():
    s = _study([(10, 30, 5, "COMPLETE"), (20, 22, 4, "COMPLETE"), (5, 99, 9, "PRUNED"),
                (20, 22, 4, "COMPLETE"), (30, 22, 3, "COMPLETE"),
                (15, float("nan"), 4, "COMPLETE")],
               baselines={"fp": {"ppl": 20, "size_mib": 60, "tokens_per_s": 2},
                          "4:64": {"ppl": 24, "size_mib": 18, "tokens_per_s": 4.5}})
    s.trials[3].duplicate_of = 1
    size = panels.series(s, panels.AXES[0])
    assert [p.trial.number for p in size.trials] == [0, 1, 4]  # no pruned, duplicate, NaN
    assert [p.trial.number for p in size.front] == [0, 1]
    assert size.uniform == [("4:64", 18.0, 24.0)] and size.fp == (60.0, 20.0)
    speedup = panels.series(s, panels.AXES[3])
    assert [round(p.x, 3) for p in speedup.front] == [2.0, 2.5]  # speed / fp speed
    assert speedup.uniform == [("4:64", 2.25, 24.0)]


def test_best_trial_is_the_smallest_that_meets_target_and_size_limit():
    s = _study([(10, 30, 5, "COMPLETE"), (20, 24, 4, "COMPLETE"), (12, 25, 4, "COMPLETE"),
                (12, 24, 4, "COMPLETE"), (8, 20, 4, "PRUNED")])
    # 12 MiB meets 25 twice: trial 3, the better one at that size (trial 2 is dominated)
    assert rows.best_trial(s).number == 3
    s.meta["max_size_mib"] = 11
    assert rows.best_trial(s) is None
    assert rows.best_trial(_study([(10, 0.7, 1, "COMPLETE"), (5, 0.5, 1, "COMPLETE")],
                                  target=0.6, higher=True)).number == 0


def test_panels_keep_far_reference_points_at_the_edge_with_their_value():
    s = _study([(10, 30, 5, "COMPLETE"), (20, 22, 4, "COMPLETE")],
               baselines={"fp": {"ppl": 20, "size_mib": 60, "tokens_per_s": 2},
                          "2:32": {"ppl": 900, "size_mib": 6, "tokens_per_s": 6},
                          "4:64": {"ppl": 24, "size_mib": 18, "tokens_per_s": 4.5}})
    size = next(p for p in panels.panels([s]) if p.axis.key == "size")
    lo, hi = size.y_range
    assert lo < 20 and 30 < hi < 40 and not size.log_y  # trials, fp and target decide
    refs = {r.label: r for r in size.refs}
    assert refs["2:32"].off == 1 and 30 < refs["2:32"].shown_y < hi
    assert refs["2:32"].text == "2:32: ppl 900.00 ↑"
    assert refs["4:64"].off == 0 and refs["4:64"].shown_y == 24 and refs["fp"].x == 60
    assert [p.axis.key for p in panels.panels([s])] == ["size", "speed", "speedup"]  # no bits


def test_chosen_configs_are_the_best_then_the_front_spread_out():
    s = _study([(i, 40 - i, 1, "COMPLETE") for i in range(1, 11)], target=33)
    for t in s.trials:
        t.layers = {"model.layers.0.mlp.up_proj": {"nbits": 4, "group_size": t.number + 8}}
    picked = rows.chosen(s, limit=3)
    assert [(kind, t.number) for kind, t in picked] == \
        [("best", 6), ("Pareto", 0), ("Pareto", 4), ("Pareto", 9)]


# ---- heatmap matrix ----------------------------------------------------------------------
def test_heatmap_matrix_from_a_plan():
    plan = Plan.from_json({"format": "autoq.plan/1", "model": "m", "layers": {
        "model.layers.1.self_attn.q_proj": {"nbits": 4, "group_size": 64},
        "model.layers.0.mlp.down_proj": {"nbits": 2, "group_size": 32},
        "model.layers.0.self_attn.q_proj": {"nbits": 8, "group_size": None},
        "model.layers.10.self_attn.k_proj": None,
        "lm_head": None}})
    hm = heatmap.heatmap(plan.layers)
    assert hm.blocks == ["0", "1", "10", "head"]  # numeric order, head last
    assert hm.roles == ["q_proj", "k_proj", "down_proj", "lm_head"]
    assert hm.bits == [[8.0, 4.0, None, None],
                       [None, None, FP_BITS, None],
                       [2.0, None, None, None],
                       [None, None, None, FP_BITS]]
    assert hm.text[0] == ["row", "64", "", ""] and hm.text[1][2] == "fp"
    assert hm.names[2][0] == "model.layers.0.mlp.down_proj"


def test_heatmap_of_a_vit_and_of_ambiguous_roles():
    vit = {f"blocks.{b}.{r}": {"nbits": 4, "group_size": 32}
           for b in (0, 1) for r in ("mlp.fc2", "attn.qkv", "attn.proj", "mlp.fc1")}
    hm = heatmap.heatmap({**vit, "head": {"nbits": 8, "group_size": 64}})
    assert hm.roles == ["qkv", "proj", "fc1", "fc2", "head"] and hm.blocks == ["0", "1", "head"]
    assert hm.bits[4] == [None, None, 8.0]
    # two roles ending the same way in one block stay apart
    hm = heatmap.heatmap({"h.0.attn.proj": None, "h.0.mlp.proj": None, "extra": None})
    assert hm.roles == ["attn.proj", "mlp.proj", "extra"] and hm.blocks == ["0", "other"]


def test_plan_summary_counts_configs():
    layers = {"a": {"nbits": 4, "group_size": 64}, "b": {"nbits": 4, "group_size": 64},
              "c": None, "d": {"nbits": 8, "group_size": None}}
    assert heatmap.plan_summary(layers) == "4:64 ×2 · fp ×1 · 8:row ×1"


# ---- reading a study folder --------------------------------------------------------------
def test_read_folder(tmp_path):
    folder = write_study(tmp_path)
    study = load.read_folder(folder)
    assert len(study.trials) == 40  # the torn last line is skipped
    assert study.front and all(t.plan.startswith("pareto-") for t in study.front)
    assert study.best is not None and study.best.plan == "best.json"
    assert study.best.number in {t.number for t in study.front}
    measured = {t.number: t.metrics for t in study.front}
    for t in study.trials:  # the re-measured speed of a Pareto config reaches its trial
        if t.number in measured:
            assert t.metrics["speed_source"] == "measured"
    table = rows.front_rows(study)
    assert [Path(r["plan"].rstrip(" ★")).name for r in table] == \
        sorted(t.plan for t in study.front)
    assert sum("★" in r["plan"] for r in table) == 1


# ---- the command -------------------------------------------------------------------------
def test_report_command_writes_png_html_md(tmp_path, monkeypatch):
    a = write_study(tmp_path / "results", "study-a", seed=0)
    b = write_study(tmp_path / "results", "study-b", seed=1, target=23.0)
    out = tmp_path / "report"
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["report", str(a), str(b), "--out", str(out)])
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in out.iterdir())
    stem = "tiny-llama-wikitext2-pareto"   # one protocol group: <model>-<task>
    assert names == sorted([f"{stem}-size.png", f"{stem}-bits.png", f"{stem}-speed.png",
                            f"{stem}-speedup.png", "study-a-bits.png", "study-b-bits.png",
                            "report.html", "report.md"])
    for name in names:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert "Plotly.newPlot" in page and "<script src" not in page  # plotly.js inline
    assert "study-a: Pareto front" in page and "study-b: Pareto front" in page
    assert "plan: results\\u002fstudy-a\\u002fpareto-00.json" in page  # the hover: the plan
    assert "<td>results/study-a/pareto-00.json ★</td>" in page or \
        "<td>results/study-a/pareto-00.json</td>" in page
    md = (out / "report.md").read_text()
    assert "### study-a" in md and "| results/study-a/pareto-00.json" in md
    assert f"({stem}-size.png)" in md
    assert "Pareto configs" in r.output and "results/study-a/pareto-00.json" in r.output
    assert leftovers(out) == []


def test_report_defaults_to_every_study_under_results(tmp_path, monkeypatch):
    write_study(tmp_path / "results" / "benchmarks", "deep")
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["report", "--format", "md"])
    assert r.exit_code == 0, r.output
    assert "## deep" in (tmp_path / "results" / "report" / "report.md").read_text()
    assert list((tmp_path / "results" / "report").iterdir()) == \
        [tmp_path / "results" / "report" / "report.md"]
    r = runner.invoke(app, ["report", "--format", "md", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"studies": ["deep"],
                                    "written": [str(Path("results") / "report" / "report.md")]}


@pytest.mark.parametrize("args, says", [
    (["--format", "png,pdf"], "--format"),
    (["--study", "nope"], "nope"),
])
def test_report_user_errors(tmp_path, args, says):
    folder = write_study(tmp_path)
    r = runner.invoke(app, ["report", str(folder), "--out", str(tmp_path / "o"), *args])
    assert r.exit_code == 2 and says in r.output
    assert not (tmp_path / "o").exists()


def test_report_on_missing_or_empty_inputs(tmp_path, monkeypatch):
    r = runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "no such study folder" in r.output
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["report"])
    assert r.exit_code == 2 and "no study folders under results" in r.output


def test_a_study_without_trials_yet(tmp_path):
    folder = write_study(tmp_path, n=0)
    r = runner.invoke(app, ["report", str(folder), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert "no complete trials yet" in (tmp_path / "o" / "report.md").read_text()


# ---- atomic outputs ----------------------------------------------------------------------
def test_a_failure_mid_draw_leaves_no_partial_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    folder = write_study(tmp_path)
    out = tmp_path / "o"
    out.mkdir()
    (out / "report.md").write_text("old report\n")
    real_savefig, calls = Figure.savefig, []

    def savefig_then_fail(self, fname, **kw):
        calls.append(1)
        if len(calls) == 3:  # third picture: write half of it, then fail
            real_savefig(self, fname, **kw)
            fname.truncate(fname.tell() // 2)
            raise OSError("disk full")
        return real_savefig(self, fname, **kw)

    monkeypatch.setattr(Figure, "savefig", savefig_then_fail)
    r = runner.invoke(app, ["report", str(folder), "--out", str(out)])
    assert r.exit_code != 0 and len(calls) == 3
    assert sorted(p.name for p in out.iterdir()) == ["report.md"]  # nothing new, nothing partial
    assert (out / "report.md").read_text() == "old report\n"


def test_write_atomic_failure_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    from autoq.io import write_atomic

    target = tmp_path / "report.html"
    write_atomic(target, "old")
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError):
        write_atomic(target, "new " * 1000)
    assert target.read_text() == "old" and leftovers(tmp_path) == []


# ---- Optuna storages ---------------------------------------------------------------------
def _storage_study(url: str, folder: Path, name: str = "stored") -> None:
    """An Optuna study with the user attrs `autoq search` sets, from a synthetic folder."""
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState, create_trial

    study = load.read_folder(folder)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url)) \
        if "://" not in url else url
    s = optuna.create_study(study_name=name, storage=storage, directions=["minimize"] * 2)
    s.set_user_attr("autoq", {**study.meta, "study": name, "storage": url})
    s.set_user_attr("baselines", study.baselines)
    dist = {"x": CategoricalDistribution([0, 1])}
    for t in study.trials:
        done = t.state == "COMPLETE"
        s.add_trial(create_trial(
            state=TrialState.COMPLETE if done else TrialState.PRUNED, params={"x": 0},
            distributions=dist, values=[t.metrics["size_mib"], t.metrics["ppl"]] if done else None,
            user_attrs={"metrics": t.metrics, "layers": t.layers, "origin": t.origin}))
    optuna.create_study(study_name="not-autoq", storage=storage)  # skipped by the report


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_report_reads_an_optuna_storage_without_writing(tmp_path, kind):
    folder = write_study(tmp_path / "src")
    path = tmp_path / ("study.db" if kind == "sqlite" else "study.log")
    url = f"sqlite:///{path}" if kind == "sqlite" else str(path)
    _storage_study(url, folder)
    before = path.read_bytes()
    out = tmp_path / "o"
    r = runner.invoke(app, ["report", url, "--out", str(out), "--format", "md,html"])
    assert r.exit_code == 0, r.output
    assert path.read_bytes() == before  # read-only
    assert not list(tmp_path.glob("*.db-*"))
    md = (out / "report.md").read_text()
    assert "## stored" in md and "not-autoq" not in md
    assert "34 complete, 6 pruned" in md
    # no plan files in a storage: the front is the quality x size front of its trials
    s = load.find_studies([url])[0]
    assert s.front is None and len(rows.front_rows(s)) == len(load.read_folder(folder).front)
    page = (out / "report.html").read_text()
    assert f"best: trial {rows.best_trial(s).number}" in page and "stored: all trials" in page
    r = runner.invoke(app, ["report", url, "--study", "other", "--out", str(out)])
    assert r.exit_code == 2 and "no autoq study named 'other'" in r.output


def test_storage_errors(tmp_path):
    r = runner.invoke(app, ["report", f"sqlite:///{tmp_path}/none.db"])
    assert r.exit_code == 2 and "no such sqlite file" in r.output
    assert not (tmp_path / "none.db").exists()  # not created by looking


# ---- --baselines -------------------------------------------------------------------------
def test_baselines_evaluates_missing_uniform_points(tmp_path, tiny_vit_checkpoint, tiny_cifar_dir):
    import optuna

    spec, ckpt = tiny_vit_checkpoint
    folder = tmp_path / "vit-study"
    folder.mkdir()
    url = f"sqlite:///{tmp_path}/study.db"
    settings = {"model": f"timm:{spec}", "task": "cifar100", "data": str(tiny_cifar_dir),
                "limit": 8, "checkpoint": str(ckpt), "device": "cpu", "dtype": "fp32"}
    meta = {"format": "autoq.study/1", "study": "vit-study", "storage": url, "model": "vit",
            "task": "cifar100", "metric": "accuracy", "higher_is_better": True, "target": 0.0,
            "protocol": "cifar100 search split (6 of 12 test images, seed 0), top-1",
            "speed_key": "images_per_s",
            "settings": settings}
    (folder / "study.json").write_text(json.dumps(meta))
    (folder / "baselines.json").write_text(json.dumps({"fp": {"accuracy": 0.5, "size_mib": 1.0}}))
    optuna.create_study(study_name="vit-study", storage=url)
    out = tmp_path / "o"
    r = runner.invoke(app, ["report", str(folder), "--baselines", "--out", str(out),
                            "--format", "md"])
    assert r.exit_code == 0, r.output
    stored = json.loads((folder / "baselines.json").read_text())
    # in_features are 64 and 256: groups of 128 fit fc2 (256 in) only, so 4:128 and 3:128
    # would leave most weights fp: no uniform reference point, skipped and said so
    assert set(stored) == {"fp", "8:64", "4:64", "3:64", "2:32", "2:64"}
    assert "baseline 4:128: skipped, 6 of 8 layers" in r.output
    assert stored["fp"] == {"accuracy": 0.5, "size_mib": 1.0}  # kept, not re-run
    assert stored["2:32"]["size_mib"] < stored["8:64"]["size_mib"]
    assert stored["4:64"]["protocol"] == meta["protocol"]
    attr = optuna.load_study(study_name="vit-study", storage=url).user_attrs[contract.BASELINES]
    assert set(attr) == set(stored)
    assert "| 2:32 |" in (out / "report.md").read_text()
    assert leftovers(folder) == []


def test_baselines_needs_the_study_settings(tmp_path):
    folder = write_study(tmp_path)
    r = runner.invoke(app, ["report", str(folder), "--baselines", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "settings" in r.output
