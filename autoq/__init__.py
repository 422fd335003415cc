"""autoq: per-layer mixed-precision HQQ quantization, searched.

The API is two functions, imported on first use so that `import autoq` stays light:

    model, tokenizer = autoq.load(DIR)      # a folder written by `autoq apply`
    report = autoq.quantize(model, plan)    # a plan applied to your own nn.Module

(see autoq.api).
"""

__version__ = "0.2.0"


def __getattr__(name: str):
    if name in ("load", "quantize"):
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'autoq' has no attribute {name!r}")
