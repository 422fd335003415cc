"""Model kinds: everything that differs between a causal LM and an image classifier.

One registered object per kind (`KINDS["lm"]`, `KINDS["vit"]`), like the serving
backends: its usual task and search space, how its speed is measured and named,
which module is its head, the fixed probe input that checks a reload, and what a
saved folder holds besides the weights. No other module branches on the kind.
Importing it imports no torch (the CLI reads the kinds' names and defaults).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    import torch
    from torch import nn


class Kind:
    name: str
    words: str              # "a causal language model"
    default_task: str
    default_space: str
    speed_key: str          # the metric key of its speed
    unit: str               # what one predicted latency produces
    low_precision_inputs: bool  # its inputs are ids, so serving it in the backend's compute
    #                             dtype (bf16) asks nothing of the caller

    def heads(self, model: nn.Module) -> set[str]:
        """Full names of the model's output layers (kept unless a plan names them)."""
        raise NotImplementedError

    def probe_output(self, loaded) -> torch.Tensor:
        """The model's output on a fixed input (for the reload check), as float on CPU."""
        raise NotImplementedError

    def speed(self, loaded, size_bytes: int, **kwargs) -> dict:
        raise NotImplementedError

    def seconds(self, loaded, **kwargs) -> float:
        """Seconds per token / image with the same engine as `speed`."""
        raise NotImplementedError

    def serving_lead(self, loaded) -> tuple[int, ...]:
        """Leading dims of a linear layer's input when serving."""
        raise NotImplementedError

    def engine(self, loaded, speed_kwargs: Mapping | None = None) -> str:
        """The speed engine `speed` uses (what the latency model times layers like)."""
        raise NotImplementedError

    def arch(self, loaded) -> dict:
        """What, besides the weights, rebuilds the architecture (stored in autoq.json)."""
        return dict(loaded.arch)

    def save_extras(self, loaded, folder: Path) -> None:
        """Files a saved folder needs besides the weights."""

    def skeleton(self, folder: Path, arch: dict, dtype: torch.dtype) -> nn.Module:
        """The architecture with no meaningful weights, to load saved weights into."""
        raise NotImplementedError

    def extras(self, folder: Path, model: nn.Module) -> dict:
        """LoadedModel fields read back from a saved folder (tokenizer / transform)."""
        return {}

    def processor(self, loaded):
        """What turns a user's input into the model's: the tokenizer / the eval transform."""
        raise NotImplementedError


class LanguageModel(Kind):
    name, words = "lm", "a causal language model"
    default_task, default_space = "wikitext2", "lm-per-layer"
    speed_key, unit = "tokens_per_s", "token"
    low_precision_inputs = True

    def heads(self, model):
        out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        return {n for n, m in model.named_modules() if out is not None and m is out}

    def probe_output(self, loaded):
        import torch

        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, loaded.model.config.vocab_size, (1, 32), generator=g)
        with torch.inference_mode():
            return loaded.model(x.to(loaded.device)).logits.float().cpu()

    def speed(self, loaded, size_bytes, **kwargs):
        from ..serve.speed import lm_decode

        out = lm_decode(loaded, **kwargs)
        out["achieved_gb_per_s"] = size_bytes * out["tokens_per_s"] / 1e9
        return out

    def seconds(self, loaded, **kwargs):
        from ..serve.speed import lm_decode

        return 1.0 / lm_decode(loaded, **kwargs)["tokens_per_s"]

    def serving_lead(self, loaded):
        return (1, 1)

    def engine(self, loaded, speed_kwargs=None):
        from ..serve.speed import default_engine

        return (speed_kwargs or {}).get("engine") or default_engine(loaded.device)

    def arch(self, loaded):
        return {"family": "hf"}

    def save_extras(self, loaded, folder):
        """config.json as the architecture (its class, the stored dtype) with no stale
        `quantization_config` (a model read from a GGUF carries one naming that file),
        generation_config.json (end-of-text ids) and the tokenizer."""
        import copy

        from ..quant.size import storage_dtype

        config = copy.deepcopy(loaded.model.config)
        config.architectures = [loaded.model.__class__.__name__]
        config.__dict__.pop("quantization_config", None)
        config.dtype = storage_dtype(loaded.dtype)
        config.save_pretrained(folder)
        if getattr(loaded.model, "generation_config", None) is not None:
            loaded.model.generation_config.save_pretrained(folder)
        loaded.tokenizer.save_pretrained(folder)

    def skeleton(self, folder, arch, dtype):
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

        config = AutoConfig.from_pretrained(folder)
        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        if (Path(folder) / "generation_config.json").exists():
            model.generation_config = GenerationConfig.from_pretrained(folder)
        return model

    def extras(self, folder, model):
        from transformers import AutoTokenizer

        return {"tokenizer": AutoTokenizer.from_pretrained(folder)}

    def processor(self, loaded):
        return loaded.tokenizer


class ImageClassifier(Kind):
    name, words = "vit", "an image classifier (ViT)"
    default_task, default_space = "cifar100", "vit-per-layer"
    speed_key, unit = "images_per_s", "image"
    low_precision_inputs = False   # a float image tensor: the model stays in fp32 on a CPU

    def heads(self, model):
        get = getattr(model, "get_classifier", None)
        out = get() if callable(get) else ()
        outs = out if isinstance(out, (tuple, list)) else (out,)  # distilled: (head, head_dist)
        from torch import nn

        return {n for n, m in model.named_modules() if any(m is o for o in outs)
                and isinstance(m, nn.Linear)}

    def probe_output(self, loaded):
        import torch

        from ..serve.speed import vit_input_size

        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, *vit_input_size(loaded.model), generator=g)
        with torch.inference_mode():
            return loaded.model(x.to(loaded.device, loaded.dtype)).float().cpu()

    def speed(self, loaded, size_bytes, **kwargs):
        from ..serve.speed import vit_images

        out = vit_images(loaded, **kwargs)
        if loaded.device.type == "cuda":
            out["images_per_s_b256"] = vit_images(loaded, batch=256)["images_per_s"]
            out["speed_protocol"] += "; and batch 256"
        return out

    def seconds(self, loaded, **kwargs):
        from ..serve.speed import vit_images

        return 1.0 / vit_images(loaded, **kwargs)["images_per_s"]

    def serving_lead(self, loaded):
        pe = getattr(loaded.model, "patch_embed", None)
        tokens = getattr(pe, "num_patches", 196) + getattr(loaded.model, "num_prefix_tokens", 1)
        return (1, tokens)

    def engine(self, loaded, speed_kwargs=None):
        return "eager"

    def skeleton(self, folder, arch, dtype):
        import timm

        return timm.create_model(arch["name"], pretrained=False, **arch["kwargs"]).to(dtype)

    def extras(self, folder, model):
        return {"transform": self.transform(model)}

    def transform(self, model):
        """timm's eval transform for `model`, at the image size it was built for (a model
        created with `img_size=32` keeps its pretrained config's 224 otherwise)."""
        from timm.data import create_transform, resolve_data_config

        from ..serve.speed import vit_input_size

        config = resolve_data_config({"input_size": vit_input_size(model)}, model=model)
        return create_transform(**config, is_training=False)

    def processor(self, loaded):
        return loaded.transform


KINDS: dict[str, Kind] = {k.name: k for k in (LanguageModel(), ImageClassifier())}


def kind_of(model: nn.Module) -> Kind:
    """The kind of a model someone brings: a timm classifier has `get_classifier`;
    anything else is treated as an LM (only its head detection is used)."""
    return KINDS["vit"] if callable(getattr(model, "get_classifier", None)) else KINDS["lm"]

