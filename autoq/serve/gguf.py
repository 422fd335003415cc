"""`export(folder, out)`: a saved Llama-architecture LM as one GGUF file, which
llama.cpp and transformers (`from_pretrained(..., gguf_file=)`) load.

GGUF stores each tensor in its own type, so a mixed per-layer plan stays mixed.
Each HQQ layer goes to the type that holds it exactly where one does:

| packed layer (HQQ)                           | GGUF type | how                               |
|----------------------------------------------|-----------|-----------------------------------|
| <= 4 bits, group a multiple of 32 (or a row) | Q4_1      | the same codes; per 32 weights    |
|                                              |           | d = scale, m = -zero*scale (fp16) |
| 8 bits, or a group not a multiple of 32      | Q8_0      | re-quantized from the dequantized |
| not quantized (2-D)                          | F16       | as saved                          |
| norms (1-D)                                  | F32       | as saved                          |

Q4_1 computes d*q + m; HQQ computes (q - zero)*scale: the same up to the fp16
rounding of m. Q4_1 spends 5 bits per weight (two fp16 per 32 weights), so an
HQQ 4-bit layer with groups of 64 (4.5 bits) grows in the file. Tensor names and
the q/k row order are llama.cpp's (convert_hf_to_gguf.py's `permute`); the
tokenizer (byte-level BPE only) goes into the file's metadata.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..quant import method_of

ARCHS = {"LlamaForCausalLM": "llama"}
BLOCK = 32
BLOCK_NAMES = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
               "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
# a byte-level BPE pre-tokenizer (tokenizer.json) -> llama.cpp's name for its split
PRE_TOKENIZERS = {json.dumps({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                              "use_regex": True}, sort_keys=True): "gpt-2"}


# ---- HQQ layer -> GGUF blocks (pure) ----------------------------------------------------
def q4_1_blocks(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                group: int) -> np.ndarray:
    """Q4_1 bytes (out, in / 32 * 20) holding HQQ codes <= 15 with groups that are a
    multiple of 32: per block d = scale, m = -zero * scale, the codes as they are."""
    out, fin = codes.shape
    per = group // BLOCK
    d = scale.repeat_interleave(per, dim=1).half()
    m = (-zero * scale).repeat_interleave(per, dim=1).half()
    q = codes.reshape(out, fin // BLOCK, BLOCK)
    qs = q[..., :BLOCK // 2] | (q[..., BLOCK // 2:] << 4)
    parts = [t.numpy().view(np.uint8).reshape(out, -1, 2) for t in (d, m)] + [qs.numpy()]
    return np.concatenate(parts, axis=-1).reshape(out, -1)


def exact_in_q4_1(layer) -> bool:
    """A packed layer whose affine form Q4_1 holds exactly: <= 4-bit codes, groups a
    multiple of 32 along in_features."""
    method = method_of(layer)
    cfg = method.config_of(layer)
    group = cfg.group_size or layer.in_features
    return "affine" in method.forms and cfg.nbits <= 4 and group % BLOCK == 0 \
        and method.axis(layer) == 1


def permute_rows(t: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's row order of a q/k projection (rotary pairs interleaved)."""
    return t.reshape(heads, 2, t.shape[0] // heads // 2, *t.shape[1:]).swapaxes(1, 2) \
        .reshape(t.shape)


# ---- the model ------------------------------------------------------------------------
def encode(layer, fp: torch.Tensor | None, heads: int | None):
    """(data, GGUF block type or None for a float array, how) of one tensor: an HQQ
    `layer`, or the float `fp` (a norm stays F32, a matrix becomes F16)."""
    from gguf import GGMLQuantizationType as T
    from gguf import quants

    if layer is None and fp.dim() == 1:
        return fp.float().numpy(), None, "float"
    if layer is None:
        w = fp.float() if heads is None else permute_rows(fp.float(), heads)
        return w.half().numpy(), None, "float"
    if exact_in_q4_1(layer):
        a = method_of(layer).affine(layer)
        codes, scale, zero, group = a.codes, a.scale, a.zero, a.group
        if heads is not None:
            codes, scale, zero = (permute_rows(t, heads) for t in (codes, scale, zero))
        return q4_1_blocks(codes, scale, zero, group), T.Q4_1, "exact"
    w = method_of(layer).dequantize(layer).float()
    w = w if heads is None else permute_rows(w, heads)
    if w.shape[1] % BLOCK:
        return w.half().numpy(), None, "dequantized"
    return quants.quantize(w.numpy(), T.Q8_0), T.Q8_0, "requantized"


def check_model(config) -> str:
    arch = (config.architectures or [""])[0]
    if arch not in ARCHS:
        raise UserError(f"GGUF export supports {', '.join(ARCHS)}, not {arch or 'this model'}; "
                        "run it with autoq.load or `autoq generate` instead.")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise UserError(f"GGUF export supports default rotary embeddings, not "
                        f"{rope['rope_type']!r} scaling; run it with autoq.load instead.")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise UserError("GGUF export does not write linear biases yet; run it with autoq.load.")
    return ARCHS[arch]


def tensors(qm, config):
    """(GGUF name, packed layer or None, float weight or None, q/k heads or None) for
    every tensor of a Llama model (a QuantizedModel); a head tied to the embedding is
    left out (llama.cpp ties a missing `output.weight` to `token_embd.weight`)."""
    model, layers = qm.model, qm.installed

    def item(gguf: str, module: str, heads: int | None = None):
        layer = layers.get(module)
        weight = None if layer is not None else model.get_submodule(module).weight.detach()
        return gguf, layer, weight, heads

    yield item("token_embd.weight", "model.embed_tokens")
    yield item("output_norm.weight", "model.norm")
    if "lm_head" in layers or "model.embed_tokens" in layers:
        tied = layers.get("lm_head") is layers.get("model.embed_tokens")
    else:
        tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    if not tied:
        yield item("output.weight", "lm_head")
    kv = config.num_key_value_heads
    for i in range(config.num_hidden_layers):
        for hf, gguf in BLOCK_NAMES.items():
            heads = {"attn_q": config.num_attention_heads, "attn_k": kv}.get(gguf)
            yield item(f"blk.{i}.{gguf}.weight", f"model.layers.{i}.{hf}", heads)


def tokenizer_metadata(writer, tokenizer, vocab_size: int) -> None:
    """A byte-level BPE tokenizer as GGUF metadata (tokens padded to the model's vocab)."""
    from gguf import TokenType

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    pre = PRE_TOKENIZERS.get(json.dumps(spec.get("pre_tokenizer"), sort_keys=True))
    if spec["model"]["type"] != "BPE" or pre is None:
        raise UserError(f"GGUF export supports byte-level BPE tokenizers (GPT-2 style), not this "
                        f"{spec['model']['type']} one; run the model with autoq.load instead.")
    tokens = {i: t for t, i in spec["model"]["vocab"].items()}
    types = {i: TokenType.NORMAL for i in tokens}
    for added in spec.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        types[added["id"]] = TokenType.CONTROL if added["special"] else TokenType.USER_DEFINED
    n = max(vocab_size, max(tokens) + 1)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list([tokens.get(i, f"[PAD{i}]") for i in range(n)])
    writer.add_token_types([types.get(i, TokenType.UNUSED) for i in range(n)])
    writer.add_token_merges(merges)
    for key, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id",
                     writer.add_eos_token_id), ("pad_token_id", writer.add_pad_token_id),
                     ("unk_token_id", writer.add_unk_token_id)):
        if getattr(tokenizer, key, None) is not None:
            add(getattr(tokenizer, key))
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def model_metadata(writer, config, name: str) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float((config.rope_parameters or {}).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_vocab_size(config.vocab_size)


def export(loaded, out: str | Path, name: str) -> dict:
    """Write a loaded saved LM (autoq.models.saved.load, on CPU in fp32) named `name` to
    `out` (via a temporary file: never half-written); what went where."""
    from gguf import GGUFWriter

    out = Path(out)
    config = loaded.model.config
    arch = check_model(config)
    tmp = out.with_name(f".{out.name}.tmp")
    writer = GGUFWriter(str(tmp), arch)
    try:
        model_metadata(writer, config, str(getattr(config, "_name_or_path", "") or name))
        tokenizer_metadata(writer, loaded.tokenizer, config.vocab_size)
        how, types = Counter(), Counter()
        for name, layer, fp, heads in tensors(loaded.quantized, config):
            data, kind, way = encode(layer, fp, heads)
            writer.add_tensor(name, data, raw_dtype=kind)
            how[way] += 1
            types[kind.name if kind else {np.float16: "F16"}.get(data.dtype.type, "F32")] += 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return {"out": str(out), "arch": arch, "size_mib": out.stat().st_size / 2**20,
            "tensors": sum(how.values()), "gguf_types": dict(types), "how": dict(how)}
