"""autoq search: one study over per-layer configs (see run.py for how the parts fit)."""
