"""Helpers for the reliability tests: run `autoq search` as real processes on the tiny
Llama, kill them, and check a finished study from its storage and its folder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import optuna
from optuna.trial import TrialState

from autoq.plan import Plan

SPACE = """format: autoq.space/1
options: [null, "8:32", "4:32", "2:32"]
groups:
  - {name: attn, match: 'self_attn\\.'}
  - {name: mlp, match: 'mlp\\.'}
baselines: ["4:32"]
"""
# a say() line of the search (progress bars, warnings and tables are not events)
EVENT = re.compile(r"^(loading |baseline |enqueued |\[\d+/\d+\] trial |measuring |timeout )")


def search_args(model_dir: Path, data: Path, out: Path, trials: int, study: str = "s",
                storage: str | None = None, seeds: int = 3) -> list[str]:
    space = out.parent / "space.yaml"
    space.write_text(SPACE)
    args = ["search", "--model", f"hf:{model_dir}", "--data", str(data), "--seq-len", "64",
            "--limit", "4", "--target-ppl", "1000", "--trials", str(trials), "--space",
            str(space), "--out", str(out), "--study", study, "--seeds", str(seeds),
            "--speed", "predicted"]
    return args + (["--storage", storage] if storage else [])


def env(beat: float = 0.5, grace: float = 2.0) -> dict:
    """One torch thread per process (workers share 2 cores) and short heartbeats."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "AUTOQ_HEARTBEAT_S": str(beat),
            "AUTOQ_GRACE_S": str(grace), "PYTHONWARNINGS": "ignore"}


class Worker:
    """`python -m autoq.cli <args>` with its stderr read into say() events as they come."""

    def __init__(self, args: list[str], environ: dict):
        self.proc = subprocess.Popen([sys.executable, "-m", "autoq.cli", *args], env=environ,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.events: list[str] = []
        self.text: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buf = b""
        for chunk in iter(lambda: self.proc.stderr.read1(4096), b""):
            buf += chunk
            *lines, buf = re.split(rb"[\r\n]", buf)
            for raw in lines:
                line = raw.decode(errors="replace").strip()
                self.text.append(line)
                if EVENT.match(line):
                    self.events.append(line)

    def wait_for_events(self, n: int, timeout: float) -> None:
        end = time.time() + timeout
        while len(self.events) < n and self.proc.poll() is None and time.time() < end:
            time.sleep(0.02)

    def kill(self) -> bool:
        """SIGKILL; True if it was still running."""
        alive = self.proc.poll() is None
        if alive:
            self.proc.kill()
        self.finish()
        return alive

    def finish(self, timeout: float | None = None) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        self.stdout = self.proc.stdout.read().decode(errors="replace")
        return rc

    def log(self) -> str:
        return "\n".join(t for t in self.text if t)[-3000:]


def check_study(folder: Path, study: str, trials: int, storage: str | None = None,
                shapes: dict | None = None) -> list[optuna.trial.FrozenTrial]:
    """Everything the issue promises about a finished study; returns its trials."""
    url = storage or f"sqlite:///{folder}/study.db"
    everything = optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)
    numbers = [t.number for t in everything]
    assert sorted(numbers) == list(range(len(numbers))), "trial numbers repeat or skip"
    states = Counter(t.state for t in everything)
    assert states[TrialState.COMPLETE] + states[TrialState.PRUNED] == trials, states
    assert states[TrialState.RUNNING] == 0, states
    finished = {t.number for t in everything if t.state.is_finished() and
                t.state != TrialState.FAIL}
    by_number = {t.number: t for t in everything}
    for t in everything:  # a retry finishes only in place of a trial that did not
        if "retry_of" in t.user_attrs and t.number in finished:
            history = t.system_attrs["retry_history"]
            assert all(by_number[n].state == TrialState.FAIL for n in history), history

    lines = (folder / "trials.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len({r["number"] for r in records}) == len(records), "trials.jsonl repeats a trial"
    assert {r["number"] for r in records if r["state"] in ("COMPLETE", "PRUNED")} == finished
    for r in records:
        assert r["state"] == by_number[r["number"]].state.name
        if r["state"] == "FAIL":
            assert r["fail_reason"] and r["fail_reason"] != "unknown", r

    pareto = json.loads((folder / "pareto.json").read_text())
    named = {f["plan"] for f in pareto["front"]}
    assert named and named == {p.name for p in folder.glob("pareto-*.json")}
    for name in sorted(named) + (["best.json"] if pareto["best"] else []):
        plan = Plan.load(folder / name)
        assert plan.extra["trial"] in finished
        if shapes is not None:
            plan.resolve(shapes)
    return everything
