"""The wheel ships everything: every subpackage is listed in pyproject.toml, and a wheel
built from the sources, installed (not editable) into a fresh venv, runs `autoq --help`
and a tiny `autoq search` from a directory with no checkout in it.

The fresh venv sees this interpreter's site-packages for the heavy dependencies
through a .pth line; .pth files inside that folder (the editable autoq finder among
them) are not processed, so `import autoq` can only find the installed wheel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["pyproject.toml", "README.md", "autoq", "eval", "search_spaces"]
SPACE = ('format: autoq.space/1\noptions: [null, "4:32"]\n'
         "groups: [{name: all, match: 'layers\\.'}]\nbaselines: []\n")


def setuptools_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_subpackage_is_listed_in_pyproject():
    config = setuptools_config()
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "autoq").rglob("__init__.py")
             if "__pycache__" not in p.parts}
    data = {f"autoq._data.{name}" for name in ("search_spaces", "eval")}
    assert set(config["packages"]) == found | data
    for package in data:
        assert (ROOT / config["package-dir"][package]).is_dir()
        assert config["package-data"][package] == ["*.yaml"]


def run(argv, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def test_the_wheel_installs_into_a_fresh_venv_and_searches(tmp_path, tiny_llama_dir,
                                                           tiny_text_file):
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info next to the sources
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, src / name)
    offline = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", tmp_path / "dist", src], env=offline)
    wheel, = (tmp_path / "dist").glob("autoq-*.whl")

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel],
        env=offline)
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
                .stdout.strip())
    (site / "shared-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    where = run([python, "-c", "import autoq, autoq.search.run; print(autoq.__file__)"],
                cwd=work, env=env).stdout.strip()
    assert Path(where).is_relative_to(site), where          # the wheel, not a checkout

    autoq = venv / "bin" / "autoq"
    assert all(c in run([autoq, "--help"], cwd=work, env=env).stdout
               for c in ("Usage: autoq", "search", "apply", "report"))
    assert "--target-ppl" in run([autoq, "search", "-h"], cwd=work, env=env).stdout
    (work / "space.yaml").write_text(SPACE)
    out = run([autoq, "search", "--model", f"hf:{tiny_llama_dir}", "--data", tiny_text_file,
               "--seq-len", 16, "--limit", 2, "--target-ppl", 1e6, "--trials", 2,
               "--prior-trials", 2, "--space", "space.yaml", "--study", "w", "--json"],
              cwd=work, env=env).stdout
    result = json.loads(out)
    assert result["finished"] == 2 and result["best"]["plan"] == "best.json"
    assert (work / "results" / "w" / "best.json").exists()
    shipped = run([python, "-c", "from autoq.io import resource_dir; "
                   "print(resource_dir('eval'), resource_dir('search_spaces'))"],
                  cwd=work, env=env).stdout.split()
    assert all(Path(p).is_relative_to(site / "autoq" / "_data") for p in shipped), shipped
