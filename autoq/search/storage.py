"""Optuna storage from a URL, and the heartbeats that get a killed worker's trial re-run.

URLs: `sqlite:///file.db` (the default, <out>/<study>/study.db: WAL with
synchronous=NORMAL, and every transaction starts with BEGIN IMMEDIATE so several local
workers queue for the write lock instead of racing on a stale read), `postgresql://user:pass@host/db`
(several machines), `journal:///path/file.log` (Optuna's journal file, guarded
by a kernel file lock that a killed process cannot leave behind).

Heartbeats work the same on every storage: while a trial runs, a thread stamps it
every HEARTBEAT_S seconds (system attr `autoq:heartbeat`, the worker's clock). Any
worker that finds a RUNNING trial whose last stamp (before the first one: its
start) is older than GRACE_S marks it FAIL and enqueues a WAITING copy with the
same parameters, at most MAX_RETRY times per config. (Optuna's own RDB heartbeat
never fails a trial killed before its first beat, and the journal has none.)
AUTOQ_HEARTBEAT_S and AUTOQ_GRACE_S override both; worker clocks must agree to
well within GRACE_S.
"""

from __future__ import annotations

import fcntl
import math
import os
import random
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from .. import study as contract
from ..errors import UserError

HEARTBEAT_S = 10.0   # a live worker stamps its running trial this often
GRACE_S = 60.0       # a RUNNING trial without a stamp for this long belongs to a dead worker
MAX_RETRY = 3        # a config whose worker died is re-run at most this often
SCHEMES = ("sqlite:///", "postgresql://", "postgresql+", "mysql://", "mysql+", "journal:///")


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"{name}={raw!r} must be a positive number of seconds; fix or unset it.")
    return value


def timing() -> tuple[float, float]:
    """(heartbeat interval, grace period) in seconds, from the environment or the defaults."""
    beat, grace = _seconds("AUTOQ_HEARTBEAT_S", HEARTBEAT_S), _seconds("AUTOQ_GRACE_S", GRACE_S)
    if grace < 2 * beat:
        raise UserError(f"AUTOQ_GRACE_S={grace:g} must be at least twice AUTOQ_HEARTBEAT_S="
                        f"{beat:g}, or a live worker's trial could be taken for a dead one.")
    return beat, grace


def check_url(url: str) -> None:
    """Reject what cannot be a storage URL before anything is loaded or written."""
    if not url.startswith(SCHEMES) or url in SCHEMES:
        raise UserError(f"--storage {url!r} is not a storage URL; use sqlite:///path.db, "
                        "postgresql://user:pass@host/db or journal:///path.log.")


@contextmanager
def file_lock(path: str | os.PathLike):
    """An exclusive flock on `path` (created if missing); the kernel drops it when the
    holder dies, so a kill -9 never leaves a stale lock behind."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class FlockJournalLock:
    """Lock object for Optuna's JournalFileBackend, on flock instead of a lock file."""

    def __init__(self, path: str):
        self.path, self.fd = path + ".flock", None

    def acquire(self) -> bool:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _first_line(e: Exception) -> str:
    text = str(getattr(e, "orig", None) or e).strip()
    return (text.splitlines() or [""])[0][:200]


def _journal(path: str) -> optuna.storages.BaseStorage:
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(path, lock_obj=FlockJournalLock(path)))


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The storage a search writes to (tables created when missing)."""
    check_url(url)
    if url.startswith("journal:///"):
        path = url.removeprefix("journal://")
        try:
            return _journal(path)
        except OSError as e:
            raise UserError(f"--storage {url}: cannot open the journal file ({e.strerror}); "
                            "check that its folder exists and is writable.")
    sqlite = url.startswith("sqlite")
    db = url.removeprefix("sqlite:///")
    if sqlite and db not in ("", ":memory:"):
        if not Path(db).parent.is_dir():
            raise UserError(f"--storage {url}: folder {Path(db).parent} does not exist; "
                            "create it or give another path.")
        with file_lock(db + ".lock"):  # one local worker at a time creates the tables
            storage = _rdb(url)
    else:
        storage = _rdb(url)
    if sqlite:
        from sqlalchemy import event

        event.listen(storage.engine, "connect", _no_fsync_per_commit)
        storage.engine.dispose()   # connections opened from here on take it
        event.listen(storage.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    return storage


def _no_fsync_per_commit(dbapi_connection, _record) -> None:
    """WAL with synchronous=NORMAL: a commit is whole after any kill of the process (the
    log is fsynced at checkpoints, not at every commit: a power cut may lose the last
    commits, never corrupt the file). A trial writes one row per choice; with an fsync
    per commit, 211 choices cost 1.7 s a trial on this machine's disk."""
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def open_existing(url: str) -> optuna.storages.BaseStorage:
    """A storage to read (`autoq report`): `url` or a journal file path, opened
    without creating tables or files."""
    if "://" not in url or url.startswith("journal:///"):
        path = Path(url.removeprefix("journal://"))
        if not path.is_file():
            raise UserError(f"{url}: no such journal file; give the path of an Optuna journal.")
        return _journal(str(path))
    kwargs = {}
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_file():
            raise UserError(f"{url}: no such sqlite file {path}; check the path (sqlite:/// + "
                            "a relative path, sqlite://// + an absolute one).")
        kwargs = {"connect_args": {"timeout": 30}}  # wait for a live search's write lock
    try:
        return optuna.storages.RDBStorage(driver_url(url), engine_kwargs=kwargs,
                                          skip_table_creation=True)
    except Exception as e:
        raise UserError(f"{url}: cannot open this Optuna storage ({e.__class__.__name__}: "
                        f"{_first_line(e)[:120]}); check the URL.")


def driver_url(url: str) -> str:
    """`postgresql://` means psycopg 3 to SQLAlchemy 2.1; use psycopg2 when only it is there."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def _rdb(url: str) -> optuna.storages.RDBStorage:
    import sqlalchemy.exc

    if url.startswith("sqlite"):  # autocommit driver; transactions begin as BEGIN IMMEDIATE
        engine = {"connect_args": {"timeout": 120, "isolation_level": None}}
    elif url.startswith("postgresql"):
        engine = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    else:
        engine = {"pool_pre_ping": True}
    for attempt in range(5):
        try:
            storage = optuna.storages.RDBStorage(driver_url(url), engine_kwargs=engine)
            if url.startswith("sqlite"):  # WAL: whole after a kill mid-write, and readers
                with storage.engine.connect() as conn:  # (autoq report) never wait
                    conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            return storage
        except ImportError as e:
            raise UserError(f"--storage {url}: the database driver is missing ({e}); "
                            "install it, e.g. `pip install autoq[postgres]` for PostgreSQL.")
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as e:
            if attempt == 4:  # (else another worker was creating the same tables: again)
                raise UserError(f"--storage {url}: cannot set up the tables "
                                f"({_first_line(e)}); check the database.")
            time.sleep(0.2 + random.random())
        except Exception as e:  # sqlalchemy: bad host, credentials, file path ...
            raise UserError(f"--storage {url}: cannot open it ({e.__class__.__name__}: "
                            f"{_first_line(e)}); check the URL and that the server is up.")
    raise AssertionError("unreachable")


# ---- heartbeats, stale trials, retries ------------------------------------------------
@contextmanager
def heartbeat(storage: optuna.storages.BaseStorage, trial_id: int, every: float):
    """Stamp the trial every `every` seconds while the block runs."""
    stop = threading.Event()

    def beat():
        while True:
            try:
                storage.set_trial_system_attr(trial_id, contract.HEARTBEAT, time.time())
            except UpdateFinishedTrialError:
                return
            except Exception:  # noqa: BLE001  (a storage hiccup: the next beat tries again)
                pass
            if stop.wait(every):
                return

    thread = threading.Thread(target=beat, name=f"autoq-heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def last_sign_of_life(t: FrozenTrial) -> float:
    beat = t.system_attrs.get(contract.HEARTBEAT)
    if isinstance(beat, (int, float)):
        return float(beat)
    return t.datetime_start.timestamp() if t.datetime_start else time.time()


def fail_stale(study: optuna.Study, grace: float) -> list[int]:
    """Fail the RUNNING trials of dead workers and enqueue their retries; their numbers."""
    storage, now, failed = study._storage, time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        silent = now - last_sign_of_life(t)
        if silent <= grace:
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, contract.FAIL_REASON,
                                        f"worker died: no heartbeat for {silent:.0f} s")
            if not storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:  # it finished, or another worker got there first
            continue
        failed.append(t.number)
        requeue(study, t)
    return failed


def requeue(study: optuna.Study, t: FrozenTrial) -> int | None:
    """Enqueue a WAITING copy of `t`'s config (not its partial results); None when
    it has no config yet or was retried MAX_RETRY times already."""
    history = [*contract.attr(t.system_attrs, contract.RETRY_HISTORY, []), t.number]
    if not t.params or len(history) > MAX_RETRY:
        return None
    copy = optuna.trial.create_trial(
        state=TrialState.WAITING, params=t.params, distributions=t.distributions,
        user_attrs={contract.ORIGIN: contract.origin(t.user_attrs), contract.RETRY_OF: history[0]},
        system_attrs={contract.RETRY_HISTORY: history})
    study.add_trial(copy)
    return history[0]
