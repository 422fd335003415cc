"""Every bad argument of every command: exit code 2, one line (the error sentence),
within 5 s, and no model loaded (every registry loader is replaced by one that fails).
The cases are the README's reliability table, row for row."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from autoq.cli import args
from autoq.models import hub
from autoq.cli import app
from autoq.models import MODELS

TINY = "timm:vit_tiny_patch16_224?depth=2&img_size=32&patch_size=8&embed_dim=64&num_heads=2"
SPACE = 'format: autoq.space/1\noptions: [null, "4:32"]\ngroups: [{name: g, match: "."}]\n'

# (case, command line with {llama} {text} {dir} {file} {plan} {space} filled in, message)
BAD = [
    ("seq-len 0", "eval -m {llama} --data {text} --seq-len 0",
     "--seq-len 0 must be at least 2 (tokens per window)."),
    ("seq-len 1", "search -m {llama} --target-ppl 10 --seq-len 1",
     "--seq-len 1 must be at least 2 (tokens per window)."),
    ("limit 0", "eval -m {llama} --limit 0",
     "--limit 0 must be at least 1 (windows or images to score; leave it out to use all)."),
    ("limit -1", "apply {plan} --eval --limit -1",
     "--limit -1 must be at least 1 (windows or images to score; leave it out to use all)."),
    ("target-ppl -3", "search -m {llama} --target-ppl -3",
     "--target-ppl -3 must be a perplexity above 1 (e.g. 14), or none to map the whole "
     "trade-off."),
    ("target-ppl 1", "search -m {llama} --target-ppl 1",
     "--target-ppl 1 must be a perplexity above 1 (e.g. 14), or none to map the whole "
     "trade-off."),
    ("target-ppl text", "search -m {llama} --target-ppl low",
     "--target-ppl 'low' is not a number; give e.g. 14, or none."),
    ("target-acc 0", "search -m " + TINY + "&pretrained=false --target-acc 0",
     "--target-acc 0 must be an accuracy in (0, 1] (e.g. 0.9), or none to map the whole "
     "trade-off."),
    ("target-acc 1.5", "search -m " + TINY + "&pretrained=false --target-acc 1.5",
     "--target-acc 1.5 must be an accuracy in (0, 1] (e.g. 0.9), or none to map the whole "
     "trade-off."),
    ("no target", "search -m {llama}",
     "give exactly one quality target: --target-ppl X, --target-acc Y or --target-kld Z (each "
     "may be none, to map the whole trade-off), or only a size budget (--max-size-mib S or "
     "--bits B) for the best quality at that size."),
    ("two targets", "search -m {llama} --target-ppl none --target-acc 0.5",
     "give exactly one quality target: --target-ppl X, --target-acc Y or --target-kld Z (each "
     "may be none, to map the whole trade-off), or only a size budget (--max-size-mib S or "
     "--bits B) for the best quality at that size."),
    ("bits 0.5", "search -m {llama} --bits 0.5",
     "--bits 0.5 must be bits per searched weight between 1 and 16 (e.g. 4.5)."),
    ("bits and max-size-mib", "search -m {llama} --bits 4 --max-size-mib 100",
     "give either --max-size-mib or --bits (the same budget in bits per searched weight), "
     "not both."),
    ("evolve without a budget", "search -m {llama} --target-ppl 10 --sampler evolve",
     "--sampler evolve searches the best quality at a size budget: give --max-size-mib or "
     "--bits and no quality target."),
    ("budget and latency", "search -m {llama} --bits 4.5 --minimize latency",
     "--minimize latency needs a quality target; a size budget alone (--max-size-mib / "
     "--bits) searches the best quality at that size."),
    ("target of the other metric", "search -m {llama} --target-acc 0.5",
     "task wikitext2 measures ppl (and kld); give --target-ppl or --target-kld."),
    ("target-kld 0", "search -m {llama} --target-kld 0",
     "--target-kld 0 must be a KL divergence above 0 (e.g. 0.05 nats), or none to map the "
     "whole trade-off."),
    ("report-limit 0", "search -m {llama} --target-ppl 10 --report-limit 0",
     "--report-limit 0 must be at least 1 (window or image)."),
    ("trials 0", "search -m {llama} --target-ppl 10 --trials 0",
     "--trials 0 must be at least 1 (finished trials in the study)."),
    ("max-size-mib 0", "search -m {llama} --target-ppl 10 --max-size-mib 0",
     "--max-size-mib 0 must be a size in MiB above 0."),
    ("timeout -5", "search -m {llama} --target-ppl 10 --timeout -5",
     "--timeout -5 must be a number of seconds above 0."),
    ("prior-trials -1", "search -m {llama} --target-ppl 10 --prior-trials -1",
     "--prior-trials -1 must be at least 0 (trials from the sensitivity prior)."),
    ("measure-front -1", "search -m {llama} --target-ppl 10 --measure-front -1",
     "--measure-front -1 must be at least 0 (Pareto configs to re-measure, 0 for none; leave "
     "it out to measure all)."),
    ("report-front 0", "search -m {llama} --target-ppl 10 --report-front 0",
     "--report-front 0 must be at least 1 (Pareto configs to score on the report split; "
     "leave it out to score all)."),
    ("one-shot budget", "search -m {llama} --target-ppl 10 --one-shot 4,x",
     "--one-shot '4,x' must be budgets in bits per weight between 1 and 16, comma-separated "
     "(e.g. 4,4.5,5,6), or none."),
    ("task of another kind", "eval -m {llama} --task cifar100",
     "task cifar100 needs an image classifier (ViT), but '{llama}' is a causal language "
     "model; pick a matching --model or --task."),
    ("unknown task", "eval -m {llama} --task imagenet",
     "unknown task 'imagenet'; use one of cifar100, digits, wikitext2."),
    ("missing data", "eval -m {llama} --data {dir}/nope.raw", "--data {dir}/nope.raw: no such file."),
    ("data is a folder", "eval -m {llama} --data {dir}", "--data {dir}: expected a file."),
    ("data is a file", "eval -m " + TINY + "&pretrained=false --data {text}",
     "--data {text}: expected a folder."),
    ("uniform nbits", "eval -m {llama} --uniform 5:64",
     "--uniform '5:64': nbits must be one of [1, 1.58, 2, 3, 4, 8]."),
    ("uniform syntax", "eval -m {llama} --uniform 4-64",
     "--uniform '4-64' is not NBITS:GROUP_SIZE; write for example 4:64."),
    ("uniform and plan", "eval --uniform 4:64 --plan {plan}",
     "give either --uniform or --plan, not both."),
    ("missing plan", "eval --plan {dir}/nope.json",
     "{dir}/nope.json: no such plan file; give the path of a plan JSON."),
    ("unknown model", "eval -m lama",
     "unknown model 'lama'; use one of deit, digits-vit, hf:, llama, smollm2, timm: (see `autoq models`)."),
    ("missing model folder", "eval -m hf:./no/such/dir",
     "--model hf:./no/such/dir: ./no/such/dir is not a folder; give a folder with config.json "
     "and weights, or a hub id such as HuggingFaceTB/SmolLM2-135M."),
    ("hub model offline", "eval -m llama",
     "--model llama needs meta-llama/Llama-3.2-1B-Instruct from the Hugging Face hub, which "
     "this machine cannot reach, and it is not in the local cache ({cache}); download it "
     "elsewhere with `hf download meta-llama/Llama-3.2-1B-Instruct` and pass --model "
     "hf:/path/to/that/dir."),
    ("timm weights offline", "search -m deit --target-acc 0.5",
     "--model deit needs timm/deit_small_patch16_224 from the Hugging Face hub, which this "
     "machine cannot reach, and it is not in the local cache ({cache}); pass --checkpoint FILE "
     "(a state dict), or use --model timm:deit_small_patch16_224?pretrained=false for random "
     "weights."),
    ("timm kwargs syntax", "eval -m timm:vit_tiny_patch16_224?depth",
     "timm:vit_tiny_patch16_224?depth: 'depth' is not key=value."),
    ("missing checkpoint", "eval -m deit --checkpoint {dir}/nope.pt",
     "--checkpoint {dir}/nope.pt: no such file; give a saved state dict (.pt/.pth)."),
    ("device", "eval -m {llama} --device tpu", "--device 'tpu' is not auto, cpu, cuda or cuda:N."),
    ("dtype", "eval -m {llama} --dtype fp8", "--dtype 'fp8' is not one of auto, fp32, fp16, bf16."),
    ("backend", "apply {plan} --backend triton",
     "--backend 'triton' is not one of auto, hqq, gemlite, torch-int4."),
    ("sampler", "search -m {llama} --target-ppl 10 --sampler cma",
     "--sampler 'cma' is not one of sensitivity, nsga2, random, evolve."),
    ("trial-speed", "search -m {llama} --target-ppl 10 --trial-speed fast",
     "--trial-speed 'fast' is not one of predicted, measured."),
    ("old --speed spelling", "search -m {llama} --target-ppl 10 --speed fast",
     "--trial-speed 'fast' is not one of predicted, measured."),
    ("minimize", "search -m {llama} --target-ppl 10 --minimize speed",
     "--minimize 'speed' is not one of size, latency."),
    ("missing space", "search -m {llama} --target-ppl 10 --space {dir}/nope.yaml",
     "--space {dir}/nope.yaml: no such file or shipped space; use a YAML path or one of "
     "lm-grouped, lm-per-layer, lm-quick, vit-grouped, vit-per-layer."),
    ("broken space", "search -m {llama} --target-ppl 10 --space {file}",
     "{file}: a search space must be a mapping with format, options and groups."),
    ("storage scheme", "search -m {llama} --target-ppl 10 --storage foo://x",
     "--storage 'foo://x' is not a storage URL; use sqlite:///path.db, "
     "postgresql://user:pass@host/db or journal:///path.log."),
    ("storage folder", "search -m {llama} --target-ppl 10 --storage sqlite:///{dir}/no/s.db",
     "--storage sqlite:///{dir}/no/s.db: folder {dir}/no does not exist; create it or give "
     "another path."),
    ("search --out is a file", "search -m {llama} --target-ppl 10 --out {file}",
     "--out {file} is a file; give a folder path."),
    ("apply --out not empty", "apply {plan} --out {dir}",
     "--out {dir} exists and is not empty; pick a new folder or pass --force."),
    ("cache-dir is a file", "eval -m {llama} --cache-dir {file}",
     "--cache-dir {file} is a file; give a folder path."),
    ("report format", "report --format gif",
     "--format 'gif': use a comma-separated list of png, html, md, e.g. png,html."),
]
# click's own checks (their wording is click's): one line as well, starting so
CLICK = [("not an integer", "search -m {llama} --target-ppl 10 --trials many",
          "Invalid value for '--trials':"),
         ("unknown option", "eval --bits 4", "No such option: --bits"),
         ("missing argument", "apply", "Missing argument 'PLAN'.")]


@pytest.fixture
def no_loading(monkeypatch):
    """Every registry loader fails the test if called; the hub is unreachable."""
    def refuse(*a, **k):
        raise AssertionError("a model was loaded")

    for name, entry in MODELS.items():
        monkeypatch.setitem(MODELS, name, dataclasses.replace(entry, loader=refuse))
    monkeypatch.setattr(hub, "reachable", lambda: False)


@pytest.fixture
def fill(tiny_llama_dir, tiny_text_file, tmp_path):
    (tmp_path / "keep.txt").write_text("not empty")
    broken = tmp_path / "broken.yaml"
    broken.write_text("- just a list\n")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"format": "autoq.plan/1", "model": f"hf:{tiny_llama_dir}",
                                "layers": {}}))
    values = {"llama": f"hf:{tiny_llama_dir}", "text": tiny_text_file, "dir": tmp_path,
              "file": broken, "plan": plan, "cache": hub.cache_dir()}
    return lambda text: text.format(**{k: str(v) for k, v in values.items()})


@pytest.mark.parametrize("case, line, message", BAD, ids=[c for c, _, _ in BAD])
def test_bad_argument_is_one_line_exit_2_fast_and_loads_nothing(case, line, message, fill,
                                                               no_loading, tmp_path):
    argv = fill(line).split()
    start = time.perf_counter()
    result = CliRunner().invoke(app, argv)
    seconds = time.perf_counter() - start
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [f"error: {fill(message)}"]
    assert seconds < 5, seconds
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.yaml", "keep.txt",
                                                         "plan.json"]  # nothing written


@pytest.mark.parametrize("case, line, start", CLICK, ids=[c for c, _, _ in CLICK])
def test_clicks_own_errors_are_one_line_too(case, line, start, fill, no_loading):
    result = CliRunner().invoke(app, fill(line).split())
    assert result.exit_code == 2, result.output
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {start}"), lines


def test_the_cli_and_the_checks_import_nothing_heavy():
    code = ("import sys, autoq.cli, autoq.cli.args, autoq.models, autoq.models.hub; "
            "print(sorted(m for m in ('torch', 'transformers', 'timm', 'optuna', 'tqdm') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_cli_reads_its_choices_from_the_registries_and_each_entry_loads():
    from autoq.models.kinds import KINDS
    from autoq.quant import METHODS
    from autoq.search import SAMPLERS
    from autoq.serve import BACKENDS
    from autoq.tasks import SCORERS, task_names

    assert args.BACKENDS == ("auto", *BACKENDS.names)
    assert args.SAMPLERS == SAMPLERS.names
    for registry in (BACKENDS, SAMPLERS, METHODS):
        assert all(registry.get(name) is not None for name in registry)
    assert sorted(SCORERS) == task_names()
    assert {e.kind for e in MODELS.values()} <= set(KINDS)
    assert {k.default_task for k in KINDS.values()} <= set(task_names())


@pytest.mark.parametrize("text, value", [("none", None), ("NONE", None), (" None ", None),
                                         ("14", 14.0), ("1.0001", 1.0001)])
def test_ppl_target_accepts_none_and_numbers_above_one(text, value):
    assert args.target("--target-ppl", text) == value


def test_offline_by_environment_needs_no_probe(monkeypatch):
    monkeypatch.setattr(hub, "reachable", lambda: pytest.fail("probed"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.offline()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "true")
    assert hub.offline()


def test_a_model_in_the_local_hub_cache_loads_offline(monkeypatch, tmp_path, tiny_llama_dir,
                                                      tiny_text_file):
    """Offline (the probe fails), `hf:org/name` that the cache holds loads from it at
    once; one it does not hold is refused before anything loads."""
    import shutil

    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_llama_dir, snapshot)
    (tmp_path / "hub" / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "reachable", lambda: False)
    common = ["--data", str(tiny_text_file), "--seq-len", "16", "--limit", "2", "--json"]
    start = time.perf_counter()
    result = CliRunner().invoke(app, ["eval", "-m", "hf:org/tiny", *common])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ppl"] > 1 and time.perf_counter() - start < 30
    result = CliRunner().invoke(app, ["eval", "-m", "hf:org/other", *common])
    assert result.exit_code == 2 and "hf download org/other" in result.output
