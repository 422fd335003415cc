"""`autoq search`: a resumable multi-objective Optuna study over per-layer configs
(run.py is the loop; its docstring maps the rest). Samplers are plug-ins, named by
`--sampler` (one function each, registered here; importing this package imports
neither optuna nor torch)."""

from ..registry import Registry

SAMPLERS = Registry("sampler", {
    "sensitivity": "autoq.search.sampler:sensitivity",
    "nsga2": "autoq.search.sampler:nsga2",
    "random": "autoq.search.sampler:random_sampler",
    "evolve": "autoq.search.evolve:sampler",
})
BUDGET_SAMPLER = "evolve"         # the default at a size budget with no quality target
TARGET_SAMPLER = "sensitivity"    # the default otherwise
