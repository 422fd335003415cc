"""The GPU check's shared pieces (scripts/gpu_check.py): its constants, log, a part's
saved state, the plans it measures and the models it builds from public configs.

The check's files import each other with the scripts folder on sys.path (scripts/ is
not a package): gpu_check.py (the command line, running the parts, the summary),
gpu_check_parts.py (the lm, vit and search parts), gpu_check_figures.py (figures,
goals, plans.md) and this one.
"""

from __future__ import annotations

import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))   # this checkout's autoq, before any installed one

import torch  # noqa: E402  (imported before forking; CUDA is touched only in the parts)

from autoq.io import write_json  # noqa: E402

FORMAT = "autoq.gpu_check/1"
PARTS = ("lm", "vit", "search")
SHARES = {"lm": 0.45, "vit": 0.07, "search": 0.48}
SUMMARY_RESERVE_S = 10.0   # the summary, and removing the scratch folder
GOALS = {"tokens_per_s": 1500.0, "speedup": 2.5, "latency_error": 0.10, "search_minutes": 30.0}
BPW_LIMIT = 4.5
TOLERANCE_FLOORS = 4.0
PROBE_TOKENS = 8
# Kernel shapes a fresh search process tunes with gemlite's own setting ('fast'), for
# lm-per-layer on Llama-3.2-1B: GEMM-like (scoring at seq_len tokens: 4 decoder shapes x
# 6 gemlite options of the space and baselines; the prompt prefill of each speed measured:
# ~16) and GEMV (the latency model at batch 1: 5 shapes x 5 options, + 4 for 2:64).
AUTOTUNE_GEMM_SHAPES, AUTOTUNE_GEMV_SHAPES = 40, 29
OUT_FILES = ("summary.json", "plans.md", "gpu_check.log", "search_trials.jsonl")

# meta-llama/Llama-3.2-1B-Instruct, config.json (public values)
LLAMA_3_2_1B = dict(
    hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
    num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072,
    rope_theta=500000.0, rope_scaling={"factor": 32.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 8192,
                                       "rope_type": "llama3"},
    tie_word_embeddings=True, rms_norm_eps=1e-5, head_dim=64, hidden_act="silu",
    attention_bias=False, mlp_bias=False, bos_token_id=128000,
    eos_token_id=[128001, 128008, 128009])
LLAMA_TINY = dict(LLAMA_3_2_1B, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=512, head_dim=32,
                  bos_token_id=1, eos_token_id=2)
DEIT = "deit_small_patch16_224"
DEIT_TINY = dict(depth=2, embed_dim=64, num_heads=2, img_size=32, patch_size=8)
LM_NAME, LM_NAME_TINY = "llama-3.2-1b-arch", "llama-3.2-1b-arch-tiny"
# gemlite autotuning in the lm part: tuned batch-1 kernels (what decode runs and is timed),
# one config for the GEMM kernels that only the untimed prompt prefill uses (each kernel
# shape tunes ~20 configs on a cold process; that is minutes over a plan's shapes).
LM_AUTOTUNE = {"GEMV": "fast", "GEMV_REVSPLITK": "fast", "GEMV_SPLITK": "fast",
               "GEMM_SPLITK": "default", "GEMM": "default"}
# The search's space in --tiny: the shipped lm-per-layer, with fewer baselines.
TINY_SPACE = """format: autoq.space/1
options: [null, "8:64", "4:32", "4:64", "4:128", "3:64", "2:32"]
groups:
  - {name: decoder, match: '\\.layers\\.\\d+\\.', per_layer: true}
ignore: ['lm_head']
baselines: ["8:64", "4:64"]
"""
MIXED = "mixed <=4.5"


# ---- logging -------------------------------------------------------------------------
LOG_PATH: Path | None = None   # set by gpu_check.main (the forked parts inherit it)
T0 = time.time()


def log(message: str) -> None:
    line = f"[{time.time() - T0:7.1f}s {os.getpid()}] {message}"
    print(line, file=sys.stderr, flush=True)
    if LOG_PATH is not None:
        with open(LOG_PATH, "a") as f:
            f.write(line + "\n")


def error_text(e: BaseException) -> str:
    first = str(e).strip().splitlines()
    return f"{e.__class__.__name__}: {first[0][:300] if first else ''}"


# ---- a part's state: saved after every step, read by the parent ------------------------
class PartState:
    def __init__(self, name: str, path: Path, share: float, deadline: float):
        self.path, self.deadline = path, deadline
        self.data = {"part": name, "status": "running", "share_s": share, "started": time.time(),
                     "done": [], "failed": {}, "skipped": {}, "current": None}
        self.save()

    def left(self) -> float:
        return self.deadline - time.time()

    def save(self) -> None:
        write_json(self.path, self.data)

    def set(self, **kw) -> None:
        self.data.update(kw)
        self.save()

    def add(self, key: str, value) -> None:
        self.data.setdefault(key, []).append(value)
        self.save()

    def run(self, steps: list[tuple[str, Callable[[], None]]], min_left: float = 1.0) -> None:
        """Run the steps in order; one that raises is recorded and the rest go on; none
        starts with less than `min_left` seconds of the share left."""
        self.set(steps=[n for n, _ in steps])
        for name, fn in steps:
            if self.left() < min_left:
                self.data["skipped"][name] = "no time left in this part's share"
                self.save()
                continue
            self.set(current=name)
            t = time.perf_counter()
            log(f"{self.data['part']}: {name}")
            try:
                fn()
            except Exception as e:  # noqa: BLE001  (recorded; the next step runs)
                self.data["failed"][name] = error_text(e)
                log(f"{self.data['part']}: {name} failed: {error_text(e)}\n"
                    + "".join(traceback.format_exc(limit=12)))
            else:
                self.data["done"].append(name)
                log(f"{self.data['part']}: {name} done in {time.perf_counter() - t:.1f} s")
            self.set(current=None)


# ---- plans ---------------------------------------------------------------------------
def mixed_plan_json(model: str, blocks: int) -> dict:
    """<= 4.5 bits/weight, lm_head quantized: 4-bit groups of 128 by default, 8-bit on the
    v_proj of every block and the down_proj of the first and last, lm_head 4:64."""
    q8, q4 = {"nbits": 8, "group_size": 64}, {"nbits": 4, "group_size": 64}
    layers = {"lm_head": q4}
    layers.update({f"model.layers.{b}.self_attn.v_proj": q8 for b in range(blocks)})
    layers.update({f"model.layers.{b}.mlp.down_proj": q8 for b in (0, blocks - 1)})
    return {"format": "autoq.plan/1", "model": model, "layers": layers,
            "default": {"nbits": 4, "group_size": 128}}


# The tied embedding/lm_head table as one quantized tensor (same config as lm_head).
EMBEDDING = {"model.embed_tokens": {"nbits": 4, "group_size": 64}}


def with_embedding(obj: dict, shapes, keep) -> tuple[dict, dict]:
    """The plan with the embedding quantized too when this autoq's plans validate such an
    entry against the model (the capability check); else the plan as it was, and why."""
    from autoq.errors import UserError
    from autoq.plan import Plan

    trial = {**obj, "layers": {**obj["layers"], **EMBEDDING}}
    try:
        Plan.from_json(trial, "mixed plan").resolve(shapes, keep, "mixed plan")
    except UserError as e:
        return obj, {"quantized": False, "why": str(e)}
    return trial, {"quantized": True}


def fp_label(dtype) -> str:
    """The unquantized model's plan name: fp16 on a GPU, fp32 on a CPU."""
    return f"fp{torch.finfo(dtype).bits}"


def lm_plans(loaded, name: str) -> list[tuple[str, dict, dict]]:
    """(plan name, resolved plan, notes) in the order they are measured (the goal plan
    first after fp16: it is what the budget must not cut)."""
    from autoq import pipeline
    from autoq.plan import Plan, uniform_plan
    from autoq.quant import LayerConfig

    shapes, keep = loaded.shapes(), loaded.keep()
    blocks = loaded.model.config.num_hidden_layers
    obj, embedding = with_embedding(mixed_plan_json(name, blocks), shapes, keep)
    out = [(fp_label(loaded.dtype), {n: None for n in shapes}, {}),
           (MIXED, pipeline.resolve(loaded, Plan.from_json(obj)), {"embedding": embedding})]
    for label, cfg in (("u4 (4:64)", "4:64"), ("u8 (8:64)", "8:64"),
                       ("u3 (3:64, fallback)", "3:64")):
        plan = uniform_plan(name, LayerConfig.parse(cfg), shapes, keep)
        out.append((label, pipeline.resolve(loaded, plan), {}))
    return out


# ---- models ----------------------------------------------------------------------------
def llama_config(tiny: bool, vocab_at_least: int = 0):
    from transformers import LlamaConfig

    values = dict(LLAMA_TINY if tiny else LLAMA_3_2_1B)
    if vocab_at_least > values["vocab_size"]:
        values["vocab_size"] = -(-vocab_at_least // 64) * 64
    return LlamaConfig(**values)


def build_llama(config, device, dtype, name: str, tokenizer=None):
    """The architecture from its config, random weights (no registered model is that)."""
    from transformers import AutoModelForCausalLM

    from autoq.models import LoadedModel
    from autoq.models.kinds import KINDS

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval().requires_grad_(False)
    loaded = LoadedModel(name, KINDS["lm"], model, device, dtype, tokenizer=tokenizer)
    loaded.heads = loaded.kind.heads(model)
    return loaded


def load_deit(tiny: bool, device, dtype):
    """DeiT-S with a 100-way head, random weights: the registered `timm:` model."""
    from autoq import pipeline

    kwargs = "".join(f"&{k}={v}" for k, v in (DEIT_TINY if tiny else {}).items())
    torch.manual_seed(0)
    loaded = pipeline.load(f"timm:{DEIT}?pretrained=false{kwargs}", device, dtype)
    loaded.spec = "deit-s" + ("-tiny" if tiny else "")
    return loaded


def load_tokenizer(folder: Path | None):
    """The carried tokenizer files; without them, SmolLM2's from its GGUF (needs gguf)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if folder is not None and (folder / "tokenizer.json").exists():
        try:
            return AutoTokenizer.from_pretrained(folder)
        except Exception as e:  # noqa: BLE001  (another transformers: the plain file)
            log(f"AutoTokenizer could not read {folder} ({error_text(e)}); using tokenizer.json")
            return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    from autoq.models.hf import smollm2_gguf

    gguf = smollm2_gguf()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def environment(device) -> dict:
    from autoq.serve.latency import device_name, package_version

    env = {"device": device_name(device), "device_type": device.type,
           "python": platform.python_version(),
           "versions": {p: package_version(p) for p in (
               "torch", "transformers", "triton", "hqq", "gemlite", "optuna", "timm",
               "tokenizers", "numpy")}}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(capability=f"{p.major}.{p.minor}", memory_gib=p.total_memory / 2**30,
                   multiprocessors=p.multi_processor_count, cuda=torch.version.cuda,
                   l2_mib=getattr(p, "L2_cache_size", 0) / 2**20)
    return env
