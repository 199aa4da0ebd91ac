"""ptlab: robustness and hyperparameter studies of prompt tuning on CLIP-style models."""

__version__ = "0.1.0"
