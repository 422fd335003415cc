"""Several `autoq search` workers on one study: every worker runs the same command and
the study still ends with exactly --trials finished trials, numbered once each.

- 3 workers on the default SQLite storage (one of them killed with SIGKILL midway:
  the others fail its trial once its heartbeat stops, and run the config again);
- 2 workers on Optuna's journal file;
- 2 workers on a real PostgreSQL server that the test starts on 127.0.0.1 from
  Debian's `postgresql` package (skipped, saying so, only when that is not installed;
  .ci/run installs it).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from searchkit import BUDGET, Worker, check_study, env, search_args

TRIALS = 10


def trials_done(w: Worker) -> int:
    w.wait_for_events(10**6, timeout=0)  # read what it printed so far
    return sum(e.startswith("[") for e in w.events)


def run_workers(tmp_path, args: list[str], n: int, kill_one_after: int | None = None) -> None:
    """`n` workers with the same command; optionally SIGKILL the first one to finish
    `kill_one_after` trials, 0.3 s into its next one. The others must finish the study."""
    workers = [Worker(args, env(beat=1.0, grace=10.0), tmp_path / f"worker{i}.log")
               for i in range(n)]
    if kill_one_after is not None:
        end = time.time() + 300
        while not any(trials_done(w) >= kill_one_after for w in workers) and time.time() < end:
            time.sleep(0.05)
        victim = max(workers, key=trials_done)
        time.sleep(0.3)
        assert victim.kill(), victim.log()
        workers.remove(victim)
    for w in workers:
        assert w.finish(timeout=400) == 0, w.log()
        assert "finished trials" in w.output(), w.log()


def test_three_workers_share_the_default_sqlite_storage(tmp_path, tiny_llama_dir,
                                                        tiny_text_file):
    out = tmp_path / "results"
    args = search_args(tiny_llama_dir, tiny_text_file, out, TRIALS)
    run_workers(tmp_path, args, 3, kill_one_after=2)
    check_study(out / "s", "s", TRIALS)


def test_two_budget_workers_share_one_sqlite_study(tmp_path, tiny_llama_dir, tiny_text_file):
    """Budget mode (evolve sampler, successive-halving pruner): exactly --trials too."""
    out = tmp_path / "results"
    args = search_args(tiny_llama_dir, tiny_text_file, out, 2 * TRIALS, mode=BUDGET)
    run_workers(tmp_path, args, 2)
    check_study(out / "s", "s", 2 * TRIALS)


def test_two_workers_share_a_journal_file(tmp_path, tiny_llama_dir, tiny_text_file):
    out = tmp_path / "results"
    url = f"journal:///{tmp_path}/study.log"
    args = search_args(tiny_llama_dir, tiny_text_file, out, TRIALS, storage=url)
    run_workers(tmp_path, args, 2)
    check_study(out / "s", "s", TRIALS, storage=journal(tmp_path / "study.log"))


def journal(path: Path):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(str(path)))


# ---- PostgreSQL ---------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A throw-away PostgreSQL server on 127.0.0.1; yields its URL, stops it after."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("PostgreSQL server binaries are not installed (/usr/lib/postgresql/*/bin); "
                    "`apt-get install postgresql` (.ci/run does it) to run this test")
    bindir = Path(found[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="autoq-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", free_port()

    def pg(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)

    try:
        pg(str(bindir / "initdb"), "-D", str(data), "-U", "autoq", "-A", "trust", "--no-sync")
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w",
           "-o", f"-k {root} -c listen_addresses=127.0.0.1 -p {port} -c fsync=off", "start")
        pg(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "autoq", "autoq")
        yield f"postgresql://autoq@127.0.0.1:{port}/autoq"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_a_postgresql_server(tmp_path, postgres, tiny_llama_dir,
                                               tiny_text_file):
    out = tmp_path / "results"
    args = search_args(tiny_llama_dir, tiny_text_file, out, TRIALS, study="pg", storage=postgres)
    run_workers(tmp_path, args, 2)
    check_study(out / "pg", "pg", TRIALS, storage=postgres)


def test_unreachable_postgresql_is_one_sentence(tmp_path, tiny_llama_dir, tiny_text_file):
    from typer.testing import CliRunner

    from autoq.cli import app

    url = f"postgresql://autoq@127.0.0.1:{free_port()}/nothing"
    out = tmp_path / "results"
    result = CliRunner().invoke(app, search_args(tiny_llama_dir, tiny_text_file, out, 3,
                                                 storage=url) + ["--quiet"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert url in result.output and "server is up" in result.output
    assert not out.exists()
