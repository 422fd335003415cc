"""The help reads like a good CLI: -h, --version, choices listed, one default style,
no type placeholders, grouped options; --json on every command with a result; -q
silences the libraries' bars too."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

import autoq
from autoq.cli import app
from autoq.models import MODELS

COMMANDS = ["models", "eval", "apply", "search", "report"]


def help_of(*argv: str) -> str:
    result = CliRunner().invoke(app, [*argv, "-h"], env={"COLUMNS": "200"}, terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def test_h_is_help_and_version_is_the_packages():
    assert help_of() == CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"},
                                           terminal_width=200).output
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"autoq {autoq.__version__}\n"
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert pyproject["project"]["version"] == autoq.__version__


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_no_type_placeholders_and_one_default_style(command):
    text = help_of(command)
    assert not re.search(r"<(bool|str|int|float|path)>", text), text
    assert "(default" not in text and "default " not in text   # no defaults in prose
    assert "[default:" in text or command == "models"


def test_search_help_lists_choices_and_groups_its_options():
    text = help_of("search")
    for choices in ("[auto|hqq|gemlite|torch-int4]", "[auto|cpu|cuda|cuda:N]",
                    "[auto|fp32|fp16|bf16]", "[sensitivity|nsga2|random|evolve]",
                    "[predicted|measured]", "[size|latency]",
                    "[cifar100|digits|wikitext2]"):
        assert choices in text
    for panel in ("Model & data", "Target", "Search budget", "Search space & sampler",
                  "Storage", "Speed & hardware", "Output"):
        assert f"─ {panel} ─" in text
    assert "--seeds" not in text and "--speed " not in text   # old spellings: hidden
    assert "--prior-trials" in text and "--trial-speed" in text and "--json" in text


def test_models_json_is_the_registry():
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == list(MODELS)
    assert {r["name"]: r["kind"] for r in rows} == {e.name: e.kind for e in MODELS.values()}


@pytest.mark.parametrize("command", ["eval", "apply", "search", "report", "models"])
def test_every_command_with_a_result_has_json(command):
    assert "--json" in help_of(command)


def test_quiet_silences_plain_tqdm_bars_such_as_the_gguf_conversions():
    """transformers converts a GGUF file under a plain `tqdm.auto` bar; `-q` must hide
    it. In a real `autoq` process tqdm is imported only after the CLI set its switches
    (the CLI imports no tqdm), so the bar is off."""
    code = ("import sys, autoq.cli; assert 'tqdm' not in sys.modules; "
            "from autoq import progress; progress.quiet_libraries(True); "
            "from tqdm.auto import tqdm; "
            "list(tqdm(range(50), desc='Converting and de-quantizing GGUF tensors...', "
            "mininterval=0))")
    env = {k: v for k, v in __import__("os").environ.items() if k != "TQDM_DISABLE"}
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=env, check=True)
    assert quiet.stderr == ""
    loud = subprocess.run([sys.executable, "-c", code.replace("(True)", "(False)")],
                          capture_output=True, text=True, env=env, check=True)
    assert "Converting and de-quantizing GGUF tensors" in loud.stderr
