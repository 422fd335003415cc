"""`--target-ppl none` / `--target-acc none` map the whole trade-off (no early stopping,
no best.json, the front and its plans as usual), and plans store absolute paths: a
plan written from one directory with relative paths applies from another."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from autoq.plan import Plan

SPACE = ('format: autoq.space/1\noptions: [null, "8:32", "4:32"]\n'
         "groups:\n  - {name: attn, match: 'attn\\.'}\n  - {name: mlp, match: 'mlp\\.'}\n"
         'baselines: ["4:32"]\n')


def invoke(*argv) -> str:
    from autoq.cli import app

    result = CliRunner().invoke(app, [str(a) for a in argv])
    assert result.exit_code == 0, result.output
    return result.stdout


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "trials.jsonl").read_text().splitlines()]


def test_no_target_maps_the_trade_off_and_its_plans_apply_elsewhere(tmp_path, monkeypatch,
                                                                    tiny_llama_dir,
                                                                    tiny_text_file):
    here, there = tmp_path / "here", tmp_path / "there"
    shutil.copytree(tiny_llama_dir, here / "tiny")
    shutil.copy(tiny_text_file, here / "wiki.raw")
    (here / "space.yaml").write_text(SPACE)
    there.mkdir()
    monkeypatch.chdir(here)
    result = json.loads(invoke("search", "--model", "hf:tiny", "--data", "wiki.raw",
                               "--seq-len", 32, "--limit", 10, "--space", "space.yaml",
                               "--target-ppl", "None", "--trials", 3, "--prior-trials", 2,
                               "--json"))
    folder = here / "results" / "hf_tiny-wikitext2-pplmap"          # the study name says map
    assert result["study_dir"] == str(Path("results") / folder.name)
    assert result["target"] is None and result["best"] is None
    assert "no quality target" in result["best_note"] and "pareto.json" in result["best_note"]
    done = [r for r in records(folder) if r["state"] != "FAIL"]
    assert len(done) == 3 and all(r["state"] == "COMPLETE" for r in done)
    assert all(r["metrics"]["fraction"] == 1 for r in done)        # no early stopping
    assert not (folder / "best.json").exists()
    pareto = json.loads((folder / "pareto.json").read_text())
    assert pareto["target"] is None and pareto["best"] is None and pareto["front"]
    assert [f["plan"] for f in pareto["front"]] == [f["plan"] for f in result["front"]]
    assert json.loads((folder / "study.json").read_text())["model"] == \
        f"hf:{(here / 'tiny').resolve()}"

    monkeypatch.chdir(there)
    for entry in pareto["front"]:
        plan_file = Path("..") / "here" / "results" / folder.name / entry["plan"]
        plan = Plan.load(plan_file)
        assert plan.model == f"hf:{(here / 'tiny').resolve()}"
        assert plan.extra["model_as_typed"] == "hf:tiny"
        applied = json.loads(invoke("apply", plan_file, "--out", f"m-{entry['number']}",
                                    "--json"))
        assert applied["size_mib"] == entry["metrics"]["size_mib"]
        assert Plan.load(there / f"m-{entry['number']}" / "plan.json").model == plan.model


def test_relative_checkpoint_is_stored_absolute_and_acc_none_is_accepted(
        tmp_path, monkeypatch, tiny_vit_checkpoint, tiny_cifar_dir):
    spec, checkpoint = tiny_vit_checkpoint
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    shutil.copy(checkpoint, here / "vit.pt")
    (here / "space.yaml").write_text('format: autoq.space/1\noptions: [null, "8:32", "4:32"]\n'
                                     "groups: [{name: blocks, match: 'blocks\\.'}]\n"
                                     "baselines: ['4:32']\n")
    monkeypatch.chdir(here)
    invoke("search", "--model", f"timm:{spec}", "--checkpoint", "vit.pt", "--data",
           tiny_cifar_dir, "--target-acc", "NONE", "--trials", 2, "--prior-trials", 2,
           "--space", "space.yaml", "--study", "v", "-q")
    assert not (here / "results" / "v" / "best.json").exists()
    plan_file = here / "results" / "v" / "pareto-00.json"
    assert Plan.load(plan_file).extra["checkpoint"] == str((here / "vit.pt").resolve())
    monkeypatch.chdir(there)
    applied = json.loads(invoke("apply", plan_file, "--out", "m", "--json"))
    assert applied["reload_max_abs_diff"] == 0
