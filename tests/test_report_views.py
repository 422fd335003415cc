"""`autoq report` under issue 14's protocol (hand-made study folders, tests/reportkit.py):
studies grouped by protocol, predicted speeds marked in every output, the plan paths as
the user types them, best.json's star, labels that do not overlap, the one-shot series
and the gap table, a latency study, the CPU caveat, and the committed studies."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import reportkit as rk
from autoq.cli import app
from autoq.report import data, gap, labels, load, panels, rows, tables

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent


def _panel(studies, stem_end: str) -> panels.Panel:
    return next(p for p in panels.panels(studies) if p.stem.endswith(stem_end))


# ---- protocol groups ----------------------------------------------------------------------
def test_report_groups_studies_by_protocol_and_never_mixes_them_on_one_axis(tmp_path,
                                                                           monkeypatch):
    root = tmp_path / "results"
    rk.make(root, "a")
    rk.make(root, "b")                                              # same protocol as a
    rk.make(root, "long", seq_len=1024, protocol=rk.PROTOCOL.replace("256", "1024"))
    rk.make(root, "other-model", model="big")
    studies = load.find_studies([str(root)])
    gs = data.groups(studies)
    assert [[s.name for s in g.studies] for g in gs] == [["a", "b"], ["long"], ["other-model"]]
    assert gs[0].stem != gs[1].stem and gs[0].stem.startswith("m-wikitext2-")  # same name
    assert gs[2].stem == "big-wikitext2"
    for p in panels.panels(studies):                 # one protocol per panel, never two
        assert len({data.Protocol.of(s.study) for s in p.series}) == 1
    monkeypatch.chdir(tmp_path)                      # no arguments: every study under results/
    r = runner.invoke(app, ["report", "--out", str(tmp_path / "o"), "--format", "png,md"])
    assert r.exit_code == 0, r.output
    files = {p.name for p in (tmp_path / "o").iterdir()}
    for g in gs:
        assert f"{g.stem}-pareto-size.png" in files and f"{g.stem}-report-size.png" in files
    md = (tmp_path / "o" / "report.md").read_text()
    sections = md.split("\n## ")[1:]
    assert len(sections) == 3 and "### a" in sections[0] and "### b" in sections[0]
    assert "seq-len 1024" in sections[1] or "1024 tokens" in sections[1]
    assert all(f"({gs[0].stem}-" not in s for s in sections[1:])  # its pictures stay in it
    assert r.output.count("m · wikitext2 —") == 2 and "big · wikitext2 —" in r.output


# ---- predicted speeds ---------------------------------------------------------------------
def _mixed_speeds(root: Path) -> Path:
    pts = [rk.point(100 + 10 * i, 30 - 2 * i) for i in range(5)]
    for i in (1, 3):                                # two plans measured, the rest predicted
        pts[i].update(speed_source="measured", tokens_per_s=20.0 + i)
    return rk.make(root, "mixed", pts, oneshot=rk.oneshots({"sensitivity@4": (112, 31)}))


def test_predicted_speeds_are_marked_in_every_output(tmp_path):
    from autoq.report import draw_html, draw_png

    study = load.read_folder(_mixed_speeds(tmp_path))
    speed = _panel([study], "-pareto-speed")
    assert {p.trial.number for p in speed.series[0].front if p.predicted} <= {0, 2, 4}
    assert all(not p.predicted for p in speed.series[0].front if p.trial.number in (1, 3))
    assert speed.note and all(p.predicted for o in speed.oneshots for p in o.points)
    fig = draw_png.figure(speed)                     # the PNG's legend says which is which
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("predicted" in t for t in legend) and any("measured" in t for t in legend)
    assert "speed predicted" in fig.axes[0].get_title()
    size_fig = draw_png.figure(_panel([study], "-pareto-size"))   # not a speed axis
    assert not any("predicted" in t.get_text() for t in size_fig.legends[0].get_texts())
    page = draw_html.page([study], panels.panels([study]))
    assert "(predicted speed)" in page and "(predicted)" in page
    table = rows.front_rows(study)
    for r in table:
        predicted = r["trial"] not in ("1", "3")
        assert r["tokens/s"].endswith("(predicted)") == predicted
        assert r["speedup vs fp"].endswith("(predicted)") == predicted
    md = tables.markdown([study], {}, {})
    assert md.count(" (predicted) |") >= 3 and tables.SPEEDS in md
    assert "| 21.0 |" in md or "| 21 |" in md       # a measured speed, unmarked


# ---- plan paths ---------------------------------------------------------------------------
def test_plan_paths_are_relative_to_where_the_user_stands(tmp_path, monkeypatch):
    folder = rk.make(tmp_path / "results" / "bench", "s")
    study = load.read_folder(folder)
    monkeypatch.chdir(tmp_path)
    first = rows.front_rows(study)[0]["plan"]
    assert first == str(Path("results/bench/s/pareto-00.json"))
    assert Path(first).is_file()                     # ready for `autoq apply`
    monkeypatch.chdir(folder)
    assert rows.front_rows(study)[0]["plan"] == "pareto-00.json"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)                     # outside: absolute, still pasteable
    assert rows.front_rows(study)[0]["plan"] == str(folder / "pareto-00.json")
    assert study.plan_path("best.json", cwd=tmp_path / "results") == \
        str(Path("bench/s/best.json"))
    # a study given by a relative path reads the same
    monkeypatch.chdir(tmp_path)
    again = load.read_folder(Path("results/bench/s"))
    assert gap.rows(again) == [] and rows.best_note(again).startswith("results/bench/s/best")


# ---- best.json ----------------------------------------------------------------------------
def test_best_json_gets_a_star_in_every_output(tmp_path):
    from autoq.report import draw_html, draw_png

    study = load.read_folder(rk.make(tmp_path, "s"))
    assert study.best.number == 2                    # the smallest meeting ppl <= 26
    for p in panels.panels([study]):
        assert p.series[0].best is not None and p.series[0].best.trial.number == 2
    fig = draw_png.figure(_panel([study], "-pareto-size"))
    stars = [c for c in fig.axes[0].collections if c.get_label() == "s: best.json"]
    assert len(stars) == 1 and list(stars[0].get_offsets()[0]) == [120.0, 26.0]
    assert any(t.get_text() == "best.json" for t in fig.axes[0].texts)
    assert '"symbol":"star"' in draw_html.page([study], panels.panels([study])).replace(" ", "")
    starred = [r for r in rows.front_rows(study) if r["plan"].endswith(" ★")]
    assert [r["trial"] for r in starred] == ["2"]


# ---- labels -------------------------------------------------------------------------------
def _overlaps(boxes) -> list:
    return [(a, b) for a, b in itertools.combinations(boxes, 2) if labels.overlap(a, b) > 0]


def test_label_placement_has_no_overlaps_on_a_crowded_example():
    anchors = [(300 + 12 * (i % 5), 200 + 9 * (i // 5)) for i in range(20)]  # a tight cluster
    sizes = [(70, 14)] * 20
    bounds = (0, 0, 900, 600)
    boxes = labels.place(anchors, sizes, obstacles=[(295, 195, 355, 245)], bounds=bounds)
    assert len(boxes) == 20 and _overlaps(boxes) == []
    assert all(labels.overlap(b, bounds) == pytest.approx(70 * 14) for b in boxes)  # inside
    # each label near its point when there is room
    assert labels.place([(100, 100)], [(50, 10)], bounds=bounds)[0][0] == pytest.approx(108)


def test_drawn_labels_do_not_overlap_on_a_crowded_plot(tmp_path):
    from autoq.report import draw_png

    base = {f"{b}:{g}": {**rk.point(110 + b + g / 64, 24 + b / 4 + g / 256), "report": {}}
            for b in (2, 3, 4) for g in (32, 64, 128)}        # nine uniform points in a heap
    base["1:64"] = rk.point(60, 900.0)                       # far above the trials
    base["fp"] = rk.point(500, 20.0)
    shots = {f"{sig}@{b}": (105 + 3 * b, 27 - b / 3)
             for sig in ("sensitivity", "single-layer-kl") for b in (4, 4.5, 5, 6)}
    study = load.read_folder(rk.make(tmp_path, "s", baselines=base, oneshot=rk.oneshots(shots)))
    fig = draw_png.figure(_panel([study], "-pareto-size"))
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.axes[0].texts if t.get_text()]
    assert len(texts) >= 12
    fig.draw_without_rendering()                     # the labels' boxes, not their arrows
    boxes = [tuple(t.get_bbox_patch().get_window_extent(renderer).extents) for t in texts]
    shrunk = [(x0 + 1, y0 + 1, x1 - 1, y1 - 1) for x0, y0, x1, y1 in boxes]  # antialiasing
    assert _overlaps(shrunk) == []
    assert any(t.get_text().startswith("1:64: ppl 900.00 ↑") for t in texts)


# ---- zoom ---------------------------------------------------------------------------------
def test_axes_zoom_on_the_trials_with_far_references_at_the_edge(tmp_path):
    base = {"fp": rk.point(500, 20.0), "2:32": rk.point(60, 400.0), "4:64": rk.point(118, 27.0)}
    study = load.read_folder(rk.make(tmp_path, "s", baselines=base,
                                     oneshot=rk.oneshots({"single-layer-kl@4": (96, 45)})))
    p = _panel([study], "-pareto-size")
    assert 90 < p.x_range[0] < 100 and 140 < p.x_range[1] < 150 and not p.log_y
    refs = {r.label: r for r in p.refs}
    assert refs["fp"].off_x == 1 and p.x_range[0] < refs["fp"].shown_x < p.x_range[1]
    assert refs["fp"].text == "fp: ppl 20.00, 500 MiB →"
    assert refs["2:32"].off == 1 and refs["2:32"].off_x == -1
    assert refs["2:32"].text == "2:32: ppl 400.00 ↑, 60 MiB ←"
    assert refs["4:64"].off == refs["4:64"].off_x == 0 and refs["4:64"].text == "4:64"
    shot = p.oneshots[0].points[0]
    assert shot.off == (0, 1) and shot.note == "ppl 45.00 ↑" and shot.y == 45
    assert p.y_range[0] < shot.at[1] < p.y_range[1]


# ---- tables: both splits, KL beside ppl ---------------------------------------------------
def test_tables_show_search_and_report_splits_and_kl_side_by_side(tmp_path):
    study = load.read_folder(rk.make(tmp_path, "s"))
    cols = rows.columns(study)
    assert cols[2:6] == ["ppl search", "ppl report", "KL search", "KL report"]
    r = rows.front_rows(study)[2]                   # 26 on search, 26.78 on report
    assert (r["ppl search"], r["ppl report"]) == ("26.00", "26.78 ✗")   # misses on report
    assert r["KL search"] == "0.12" and r["KL report"] == "0.1356"
    assert "misses the target on the report split" in rows.best_note(study)
    notes = rows.split_notes(study)
    assert notes[0] == f"search split: {rk.PROTOCOL}" and notes[1].startswith(
        f"report split: {rk.REPORT}")
    # an old study (no report split, no KL): one ppl column, as before
    old = [{k: v for k, v in rk.point(100 + i, 30 - i, report=None).items() if k != "kld"}
           for i in range(3)]
    fp = {"ppl": 20.0, "size_mib": 500.0, "tokens_per_s": 2.0}
    old_study = load.read_folder(rk.make(tmp_path, "old", old, baselines={"fp": fp}))
    assert rows.columns(old_study)[2:4] == ["ppl", "size MiB"]


# ---- one-shot series and the gap table ----------------------------------------------------
SHOTS = {"sensitivity@4": (115, 31), "sensitivity@5": (135, 27),
         "single-layer-kl@4": (95, 40), "single-layer-kl@5": (140, 26.5)}


def test_both_one_shot_series_are_drawn_on_every_front(tmp_path):
    study = load.read_folder(rk.make(tmp_path, "s", oneshot=rk.oneshots(SHOTS)))
    ps = panels.panels([study])
    assert {p.stem.rsplit("-", 1)[-1] for p in ps} == {"size", "bits", "speed", "speedup"}
    for p in ps:
        assert [o.signal for o in p.oneshots] == ["sensitivity", "single-layer-kl"]
        assert [q.label for q in p.oneshots[0].points] in (["4", "5"], ["5", "4"])
    report = _panel([study], "-report-size")
    assert report.oneshots[0].points[0].y == pytest.approx(31 * 1.03)   # report split


def test_gap_to_one_shot_at_equal_size_on_a_hand_made_example(tmp_path):
    # front: 100/30, 110/28, 120/26, 130/24, 140/22 MiB/ppl; report = 1.03 × search
    study = load.read_folder(rk.make(tmp_path, "s", oneshot=rk.oneshots(SHOTS)))
    got = {g.label: g for g in gap.gaps(study)}
    assert list(got) == ["sensitivity@4", "sensitivity@5", "single-layer-kl@4",
                         "single-layer-kl@5"]
    assert got["sensitivity@4"].front.number == 1          # 110 MiB: the largest not larger
    assert got["sensitivity@4"].delta("search") == pytest.approx(28 - 31)
    assert got["sensitivity@4"].delta("report") == pytest.approx((28 - 31) * 1.03)
    assert got["sensitivity@5"].front.number == 3 and \
        got["sensitivity@5"].delta("search") == pytest.approx(-3)
    assert got["single-layer-kl@4"].front is None          # smaller than every front plan
    assert got["single-layer-kl@4"].delta("search") is None
    assert got["single-layer-kl@5"].front.number == 4      # equal size counts
    table = gap.rows(study)
    assert list(table[0]) == gap.columns(study)
    assert table[0]["front plan at ≤ that size"].endswith("pareto-01.json")
    assert table[0]["front trial"] == "1" and table[0]["front size MiB"] == "110"
    assert table[0]["Δ search"] == "-3.00 (-9.7%)" and table[0]["Δ report"] == "-3.09 (-9.7%)"
    assert table[2]["front plan at ≤ that size"] == "none this small"
    lines = gap.summary(study)
    assert "over 2 budget(s)" in lines[0] and "1 one-shot plan(s) smaller" in lines[1]
    md = tables.markdown([study], {}, {})
    assert gap.title(study) in md and "| sensitivity@4 |" in md


def test_gap_for_accuracy_counts_points_and_prefers_the_better(tmp_path):
    s = data.Study("acc", {"metric": "accuracy", "higher_is_better": True, "target": 0.9},
                   {}, [], oneshot={"sensitivity@4": {"signal": "sensitivity",
                                                      "budget_bits": 4, "metrics": {
                                                          "accuracy": 0.90, "size_mib": 10}}})
    s.front = [data.Trial(i, "COMPLETE", "sampler", {}, {"accuracy": a, "size_mib": x})
               for i, (x, a) in enumerate([(8, 0.91), (9, 0.93), (11, 0.95)])]
    (g,) = gap.gaps(s)
    assert g.front.number == 1 and g.delta("search") == pytest.approx(0.03)
    assert g.delta("report") is None
    assert gap.rows(s)[0]["Δ search"] == "+3.00 pts" and "ppl report" not in gap.columns(s)


# ---- a latency study ----------------------------------------------------------------------
def test_a_latency_study_is_drawn_against_latency(tmp_path, monkeypatch):
    pts = [rk.point(size, ppl, latency_ms=lat, latency_source=src)
           for size, ppl, lat, src in [(100, 30, 9.0, "predicted"), (140, 27, 6.0, "predicted"),
                                       (120, 25, 7.0, "measured"), (130, 24, 8.0, "predicted"),
                                       (110, 28, 10.0, "predicted")]]
    shots = rk.oneshots({"sensitivity@4": (115, 29), "single-layer-kl@4": (118, 29.5)})
    for i, e in enumerate(shots.values()):
        e["metrics"]["latency_ms"] = 8.5 + i
    folder = rk.make(tmp_path / "results", "fast", pts, objective="latency", oneshot=shots)
    study = load.read_folder(folder)
    assert study.objective == "latency" and study.x_key == "latency_ms"
    assert [t.number for t in study.front] == [1, 2, 3]     # by latency: 6, 7, 8 ms
    lat = _panel([study], "-pareto-latency")
    assert [(p.x, p.y) for p in lat.series[0].front] == [(6.0, 27), (7.0, 25), (8.0, 24)]
    assert [p.predicted for p in lat.series[0].front] == [True, False, True]
    assert lat.x_label.startswith("latency (ms per token") and lat.note
    assert lat.series[0].best.trial.number == 2             # the fastest meeting ppl <= 26
    assert len(lat.oneshots) == 2
    assert not any(p.stem.endswith(("-speed", "-speedup")) for p in panels.panels([study]))
    assert _panel([study], "-report-latency").split == "report"
    assert gap.key(study) == "latency_ms" and "front plan at ≤ that latency" in gap.columns(study)
    (g, _) = gap.gaps(study)
    assert g.front.number == 3                              # ≤ 8.5 ms, the best of 6/7/8 ms
    table = rows.front_rows(study)
    assert [r["trial"] for r in table] == ["1", "2", "3"] and table[1]["plan"].endswith("★")
    assert table[0]["ms/token"] == "6 (predicted)" and table[1]["ms/token"] == "7"
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["report", str(folder), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o" / "m-wikitext2-pareto-latency.png").is_file()
    assert "objective: quality × latency" in (tmp_path / "o" / "report.md").read_text()


# ---- the CPU caveat -----------------------------------------------------------------------
def test_cpu_speed_plots_carry_the_noise_caveat(tmp_path):
    from autoq.report import draw_html, draw_png

    pts = [rk.point(100 + 10 * i, 30 - 2 * i, device="cpu") for i in range(3)]
    study = load.read_folder(rk.make(tmp_path, "cpu", pts))
    speed, size = _panel([study], "-pareto-speed"), _panel([study], "-pareto-size")
    assert speed.caveat == panels.CPU_CAVEAT and size.caveat == ""
    fig = draw_png.figure(speed)
    assert fig._supxlabel is not None and fig._supxlabel.get_text() == panels.CPU_CAVEAT
    assert "CPU timing: noisy (shared cores)" in draw_html.page([study], [speed])
    gpu = load.read_folder(rk.make(tmp_path, "gpu"))
    assert _panel([gpu], "-pareto-speed").caveat == ""


# ---- the committed studies still load -----------------------------------------------------
@pytest.mark.parametrize("bench", ["smollm2-wikitext2", "digits-vit"])
def test_committed_studies_still_report(tmp_path, monkeypatch, bench):
    folder = REPO / "results" / "benchmarks" / bench
    monkeypatch.chdir(REPO)
    studies = load.find_studies([str(folder)])
    assert len(studies) == 2 and len(data.groups(studies)) == 1
    assert panels.panels(studies) and all(rows.front_rows(s) for s in studies)
    r = runner.invoke(app, ["report", str(folder), "--out", str(tmp_path / "o"), "--format",
                            "md,html", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["studies"] == [s.name for s in studies]
    md = (tmp_path / "o" / "report.md").read_text()
    assert f"results/benchmarks/{bench}/" in md               # paths from the repo root
