"""autoq: per-layer mixed-precision HQQ quantization, searched."""
__version__ = "0.1.0"
