"""A trial that raises is recorded FAIL with its reason and the search goes on; Ctrl-C
re-enqueues the running config; bad input to `autoq search` is one sentence naming
the input and the fix, exit code 2, no traceback, and no study folder left behind."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from autoq.cli import app
from autoq.quant import LayerConfig
from autoq.search.trial import TrialRunner
from searchkit import search_args

TRIALS = 6


pytestmark = pytest.mark.usefixtures("one_thread")


def search(args: list[str]):
    return CliRunner().invoke(app, [*args, "--quiet"])


def records(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "trials.jsonl").read_text().splitlines()]


def break_trials(monkeypatch, faults: list) -> None:
    """The i-th trial's evaluation runs faults[i] (None: as is); baselines and the
    prior are not touched (they do not go through TrialRunner.evaluate)."""
    real, upcoming = TrialRunner.evaluate, iter(faults)

    def evaluate(self, resolved, **kw):
        fault = next(upcoming, None)
        run = lambda r, **k: real(self, r, **k)  # noqa: E731
        return fault(run, resolved, kw) if fault else run(resolved, **kw)

    monkeypatch.setattr(TrialRunner, "evaluate", evaluate)


def cuda_oom(run, resolved, kw):
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def layer_fails_to_quantize(run, resolved, kw):  # group 48 does not divide 64: HQQ asserts
    return run({**resolved, "model.layers.0.mlp.up_proj": LayerConfig(4, 48)}, **kw)


def nan_quality(run, resolved, kw):
    return {**run(resolved, **kw), "ppl": math.nan}


def interrupt(run, resolved, kw):
    raise KeyboardInterrupt


def test_failing_trials_are_recorded_and_the_search_goes_on(tmp_path, monkeypatch,
                                                            tiny_llama_dir, tiny_text_file):
    break_trials(monkeypatch, [cuda_oom, None, layer_fails_to_quantize, nan_quality])
    out = tmp_path / "results"
    result = search(search_args(tiny_llama_dir, tiny_text_file, out, TRIALS))
    assert result.exit_code == 0, result.output
    recs = records(out / "s")
    assert sum(r["state"] == "COMPLETE" for r in recs) == TRIALS
    failed = [r["fail_reason"] for r in recs if r["state"] == "FAIL"]
    assert len(failed) == 3, failed
    assert failed[0].startswith("OutOfMemoryError: CUDA out of memory")
    assert failed[1].startswith("AssertionError: group_size should be divisble")
    assert failed[2].startswith("FloatingPointError: ppl is nan")


def test_five_failures_in_a_row_stop_with_one_sentence(tmp_path, monkeypatch, tiny_llama_dir,
                                                      tiny_text_file):
    break_trials(monkeypatch, [cuda_oom] * 10)
    out = tmp_path / "results"
    result = search(search_args(tiny_llama_dir, tiny_text_file, out, TRIALS))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1] == (
        "error: 5 trials in a row failed (last: OutOfMemoryError: CUDA out of memory. Tried to "
        "allocate 2.00 GiB); fix the cause and run the same command to resume.")
    assert [r["state"] for r in records(out / "s")] == ["FAIL"] * 5


def test_ctrl_c_reenqueues_the_running_config(tmp_path, monkeypatch, tiny_llama_dir,
                                             tiny_text_file):
    out = tmp_path / "results"
    args = search_args(tiny_llama_dir, tiny_text_file, out, TRIALS)
    with monkeypatch.context() as m:
        break_trials(m, [None, interrupt])
        result = search(args)
    assert result.exit_code == 130 and "interrupted" in result.stderr
    assert search(args).exit_code == 0
    recs = {r["number"]: r for r in records(out / "s")}
    assert recs[1]["state"] == "FAIL" and recs[1]["fail_reason"].startswith("interrupted")
    again = [r for r in recs.values() if r.get("retry_of") == 1]
    assert len(again) == 1 and again[0]["state"] == "COMPLETE"
    assert again[0]["layers"] == recs[1]["layers"] and again[0]["origin"] == "prior"
    assert sum(r["state"] == "COMPLETE" for r in recs.values()) == TRIALS


# ---- bad input: exit 2, one sentence naming the input and the fix, nothing written ----
def garbage(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


BAD = {  # case -> (how to change the args, words the sentence must contain)
    "storage scheme": (lambda a, t: a + ["--storage", "foo://x"],
                       ["--storage 'foo://x' is not a storage URL", "sqlite:///"]),
    "storage folder": (lambda a, t: a + ["--storage", f"sqlite:///{t}/no/such/dir/s.db"],
                       ["does not exist", "create it"]),
    "missing data": (lambda a, t: swap(a, "--data", str(t / "missing.raw")),
                     ["--data", "missing.raw", "no such file"]),
    "data is a folder": (lambda a, t: swap(a, "--data", str(t)), ["--data", "expected a file"]),
    "data not text": (lambda a, t: swap(a, "--data", str(garbage(t, "w.raw", b"\xff\xfe\x00\x81"))),
                      ["--data", "w.raw", "UTF-8"]),
    "unknown model": (lambda a, t: swap(a, "--model", "nosuchmodel"),
                      ["unknown model 'nosuchmodel'", "autoq models"]),
    "missing space": (lambda a, t: swap(a, "--space", str(t / "nope.yaml")),
                      ["--space", "nope.yaml", "no such file"]),
    "bad space": (lambda a, t: swap(a, "--space", str(garbage(t, "s.yaml", b"format: [1"))),
                  ["s.yaml", "not valid YAML"]),
}


def swap(args: list[str], flag: str, value: str) -> list[str]:
    i = args.index(flag)
    return [*args[:i + 1], value, *args[i + 2:]]


def assert_clean_failure(result, words: list[str], out) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and all(w in errors[0] for w in words), errors
    assert errors[0].endswith(".") and result.stdout == ""
    assert not out.exists()  # no study folder, database, trials.jsonl or pareto.json


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_sentence_and_writes_nothing(tmp_path, case, tiny_llama_dir,
                                                      tiny_text_file):
    change, words = BAD[case]
    out = tmp_path / "results"
    args = change(search_args(tiny_llama_dir, tiny_text_file, out, TRIALS), tmp_path)
    assert_clean_failure(search(args), words, out)


def test_corrupt_checkpoint_is_one_sentence(tmp_path, tiny_vit_checkpoint, tiny_cifar_dir):
    spec, _ = tiny_vit_checkpoint
    bad = garbage(tmp_path, "vit.pt", bytes(range(256)) * 40)
    out = tmp_path / "results"
    result = search(["search", "--model", f"timm:{spec}", "--checkpoint", str(bad), "--data",
                     str(tiny_cifar_dir), "--target-acc", "0.5", "--trials", "3", "--out",
                     str(out)])
    assert_clean_failure(result, ["--checkpoint", "vit.pt"], out)


@pytest.mark.parametrize("name, value, words", [
    ("AUTOQ_GRACE_S", "soon", ["AUTOQ_GRACE_S='soon'", "positive number of seconds"]),
    ("AUTOQ_HEARTBEAT_S", "-1", ["AUTOQ_HEARTBEAT_S='-1'", "positive number of seconds"]),
    ("AUTOQ_HEARTBEAT_S", "100", ["AUTOQ_GRACE_S=60", "at least twice AUTOQ_HEARTBEAT_S=100"]),
])
def test_bad_heartbeat_settings_are_one_sentence(tmp_path, monkeypatch, name, value, words,
                                                 tiny_llama_dir, tiny_text_file):
    monkeypatch.delenv("AUTOQ_GRACE_S", raising=False)
    monkeypatch.setenv(name, value)
    out = tmp_path / "results"
    args = search_args(tiny_llama_dir, tiny_text_file, out, TRIALS)
    assert_clean_failure(search(args), words, out)
