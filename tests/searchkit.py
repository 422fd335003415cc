"""Helpers for the reliability tests: run `autoq search` as real processes on the tiny
Llama, kill them, and check a finished study from its storage and its folder."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
from optuna.trial import TrialState

from autoq import study as contract
from autoq.plan import Plan
from autoq.search.storage import driver_url

SPACE = """format: autoq.space/1
options: [null, "8:32", "4:32", "2:32"]
groups:
  - {name: attn, match: 'self_attn\\.'}
  - {name: mlp, match: 'mlp\\.'}
baselines: ["4:32"]
"""
# a say() line of the search (progress bars, warnings and tables are not events)
EVENT = re.compile(r"^(loading |baseline |enqueued |\[\d+/\d+\] trial |measuring |timeout )")


TARGET = ["--target-ppl", "1000"]
BUDGET = ["--bits", "5", "--one-shot", "none"]   # budget mode: evolve; a trial is pruned
#                                                  after 1 window or scored on all 4


def search_args(model_dir: Path, data: Path, out: Path, trials: int, study: str = "s",
                storage: str | None = None, seeds: int = 3,
                mode: list[str] = TARGET) -> list[str]:
    space = out.parent / "space.yaml"
    space.write_text(SPACE)
    args = ["search", "--model", f"hf:{model_dir}", "--data", str(data), "--seq-len", "64",
            "--limit", "4", "--trials", str(trials), "--space",
            str(space), "--out", str(out), "--study", study, "--prior-trials", str(seeds),
            "--trial-speed", "predicted", *mode]
    return args + (["--storage", storage] if storage else [])


def env(beat: float = 0.5, grace: float = 2.0) -> dict:
    """One torch thread per process (workers share 2 cores) and short heartbeats."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "AUTOQ_HEARTBEAT_S": str(beat),
            "AUTOQ_GRACE_S": str(grace), "PYTHONWARNINGS": "ignore"}


def run_cli(args: list[str], log: str, environ: dict) -> None:
    """Process target: `autoq <args>` with stdout and stderr into the file `log`."""
    import faulthandler
    import threading

    import torch
    import tqdm

    os.environ.clear()
    os.environ.update(environ)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    faulthandler.enable()  # a crash (not a kill) leaves its stack in the log
    torch.set_num_threads(1)
    tqdm.tqdm.set_lock(threading.RLock())  # not a semaphore that a kill -9 would leak
    from autoq.cli import app

    app(args, prog_name="autoq")


_FORKSERVER = None


def forkserver():
    """Processes forked from one that has imported torch, transformers and autoq once:
    a kill test restarts the search twenty times without paying the imports each time."""
    global _FORKSERVER
    if _FORKSERVER is None:
        _FORKSERVER = multiprocessing.get_context("forkserver")
        _FORKSERVER.set_forkserver_preload(PRELOAD)
    return _FORKSERVER


PRELOAD = ["torch", "transformers", "transformers.models.llama.modeling_llama", "optuna",
           "hqq.core.quantize", "autoq.cli", "autoq.search.run", "autoq.evaluate", "searchkit"]


class Worker:
    """`autoq <args>` in its own process (forked from the preloaded server, or a fresh
    `python -m autoq.cli` with fresh=True), its say() lines read as they come."""

    def __init__(self, args: list[str], environ: dict, log: Path, fresh: bool = False):
        self.log_path, self.events, self.text, self._seen = Path(log), [], [], 0
        self.times: list[float] = []  # when each event was seen
        self.log_path.write_text("")
        if fresh:
            with open(self.log_path, "ab") as f:
                self.proc = subprocess.Popen([sys.executable, "-m", "autoq.cli", *args],
                                             env=environ, stdout=f, stderr=f)
            self.pid = self.proc.pid
        else:
            self.proc = forkserver().Process(target=run_cli, args=(args, str(log), environ))
            self.proc.start()
            self.pid = self.proc.pid

    def alive(self) -> bool:
        return (self.proc.poll() is None) if isinstance(self.proc, subprocess.Popen) else \
            self.proc.is_alive()

    def _read(self) -> None:
        data = self.log_path.read_bytes()
        *lines, _ = re.split(rb"[\r\n]", data[self._seen:])
        self._seen += sum(len(line) + 1 for line in lines)
        for raw in lines:
            line = raw.decode(errors="replace").strip()
            self.text.append(line)
            if EVENT.match(line):
                self.events.append(line)
                self.times.append(time.time())

    def wait_for_events(self, n: int, timeout: float) -> None:
        end = time.time() + timeout
        while True:
            self._read()
            if len(self.events) >= n or not self.alive() or time.time() >= end:
                return
            time.sleep(0.02)

    def kill(self) -> bool:
        """SIGKILL; True if it was still running."""
        alive = self.alive()
        if alive:
            os.kill(self.pid, signal.SIGKILL)
        self.finish()
        return alive

    def finish(self, timeout: float | None = None) -> int:
        if isinstance(self.proc, subprocess.Popen):
            rc = self.proc.wait(timeout)
        else:
            self.proc.join(timeout)
            rc = self.proc.exitcode
        self._read()
        return rc

    def output(self) -> str:
        return "\n".join(t for t in self.text if t)

    def log(self) -> str:
        return self.output()[-3000:]


def check_study(folder: Path, study: str, trials: int, storage: str | None = None,
                shapes: dict | None = None) -> list[optuna.trial.FrozenTrial]:
    """Everything the issue promises about a finished study; returns its trials."""
    url = storage or f"sqlite:///{folder}/study.db"
    url = driver_url(url) if isinstance(url, str) else url
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
        if contract.RETRY_OF in t.user_attrs and t.number in finished:
            history = t.system_attrs[contract.RETRY_HISTORY]
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
