"""Tiny random models of many transformers and timm families (the family matrix).

`make_lm(family, folder)` saves a 2-block model with the tiny word-level tokenizer of
conftest.py (vocabulary 128) for `--model hf:<folder>`; `VIT_SPECS[family]` is a
`timm:` spec with random weights for 32x32 images.
"""

from __future__ import annotations

from pathlib import Path

import torch

COMMON = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
LM = {
    "llama": dict(intermediate_size=128, num_key_value_heads=2),
    "qwen2": dict(intermediate_size=128, num_key_value_heads=2),
    "qwen3": dict(intermediate_size=128, num_key_value_heads=2, head_dim=16),
    "mistral": dict(intermediate_size=128, num_key_value_heads=2),
    "gemma2": dict(intermediate_size=128, num_key_value_heads=2, head_dim=16),
    "opt": dict(ffn_dim=128, word_embed_proj_dim=64),
    "phi3": dict(intermediate_size=128, num_key_value_heads=2),
    "gpt_neox": dict(intermediate_size=128),
    "falcon": dict(new_decoder_architecture=True, num_kv_heads=2, ffn_hidden_size=128),
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4, n_positions=128),
    "mixtral": dict(intermediate_size=128, num_key_value_heads=2, num_local_experts=4,
                    num_experts_per_tok=2),
    "qwen2_moe": dict(intermediate_size=128, num_key_value_heads=2, num_experts=4,
                      num_experts_per_tok=2, moe_intermediate_size=64,
                      shared_expert_intermediate_size=64),
}
GPT2_DROP = ("hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings")

TINY_VIT = "img_size=32&patch_size=8&embed_dim=64&depth=2&num_heads=2&pretrained=false"
VIT_SPECS = {
    "vit": f"timm:vit_tiny_patch16_224?{TINY_VIT}",
    "deit3": f"timm:deit3_small_patch16_224?{TINY_VIT}",
    "beit": f"timm:beit_base_patch16_224?{TINY_VIT}",
    "eva02": f"timm:eva02_tiny_patch14_224?{TINY_VIT}",
    "swin": "timm:swin_tiny_patch4_window7_224?img_size=32&patch_size=2&embed_dim=32"
            "&depths=2,2&num_heads=2,4&window_size=4&pretrained=false",
}


def make_lm(family: str, folder: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    from conftest import tiny_tokenizer

    kw = {**COMMON, **LM[family]}
    if family == "gpt2":
        kw = {k: v for k, v in kw.items() if k not in GPT2_DROP}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(family, **kw))
    with torch.no_grad():  # MoE experts start empty in transformers 5: give them weights
        for p in model.parameters():
            if p.dim() == 3:
                p.normal_(0, 0.05)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder
