"""autoq search: spaces, sensitivities, seeds and the Optuna study."""
