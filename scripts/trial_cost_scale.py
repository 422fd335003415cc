"""Trial cost where quantizing is the expensive part: Llama-3.2-1B's architecture on CPU.

The weights are random (HQQ's cost depends on the shapes, not the values; the public
config values of Llama-3.2-1B are used), the tokenizer is SmolLM2's (its ids fit the
larger vocabulary). One plan (uniform 4:64, head kept), scored on the first --windows
windows of WikiText-2 with the same scoring path both times:

- naive: quantize every linear from scratch (empty cache), then score;
- autoq: the same plan again with every (layer, option) pair already in the layer
  cache, as in a search after its sensitivity pass: swap the layers in, then score.

    python scripts/trial_cost_scale.py --windows 4 --out results/benchmarks/trial-cost-llama1b-cpu.json
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from autoq.pipeline.evaluator import EvalSettings, Evaluator
from autoq.io import write_json
from autoq.quant import LayerConfig
from autoq.quant.cache import LayerCache

LLAMA_3_2_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                    num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                    max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
                    tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128009)


def make_model(folder: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from autoq.models import load_model

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**LLAMA_3_2_1B)).to(torch.bfloat16)
    model.save_pretrained(folder)
    load_model("smollm2").tokenizer.save_pretrained(folder)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/wikitext-2-raw/wiki.test.raw")
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--option", default="4:64")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "llama-3.2-1b-random"
        make_model(folder)
        ev = Evaluator(EvalSettings(model=f"hf:{folder}", task="wikitext2", data=a.data,
                                    seq_len=512, limit=a.windows))
    ev.fast_scoring = True  # both runs score the same way
    cfg = LayerConfig.parse(a.option)
    plan = {n: (None if n in ev.loaded.heads else cfg) for n in ev.shapes}
    ev.cache = LayerCache()
    t = time.perf_counter()
    naive = ev.run(plan, speed=False)
    naive_s = time.perf_counter() - t
    ev.apply({n: None for n in ev.shapes})           # back to the unquantized model
    t = time.perf_counter()
    cached = ev.run(plan, speed=False)
    cached_s = time.perf_counter() - t
    assert cached["ppl"] == naive["ppl"]
    result = {
        "model": "Llama-3.2-1B architecture, random weights (bf16 saved, fp32 on CPU)",
        "plan": f"uniform {a.option}, lm_head kept", "quantized_layers": len(plan) - 1,
        "protocol": ev.protocol, "naive_seconds": naive_s, "autoq_trial_seconds": cached_s,
        "scoring_seconds": cached["eval_seconds"], "ratio": cached_s / naive_s,
        "note": "naive = quantize every layer from scratch, then score; autoq = the same plan "
                "with its layers in the cache (swap in, then score). Same scoring path.",
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
        "versions": {"torch": torch.__version__},
        "command": f"python scripts/trial_cost_scale.py --windows {a.windows} --option "
                   f"{a.option} --out {a.out}",
    }
    write_json(a.out, result)
    print(result)


if __name__ == "__main__":
    main()
