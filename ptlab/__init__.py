"""ptlab: robustness and hyperparameter studies of prompt tuning on CLIP-style models.

Importing ptlab imports nothing heavy: every command and every Ray process pays only for what it uses.
"""

__version__ = "0.1.0"
