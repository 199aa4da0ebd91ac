"""Linear classification heads on frozen image features (Classifier-R, Classifier-C).

The head scores `s * normalize(f) @ W.T + b` with CLIP's frozen logit scale
s, the form of the zero-shot classifier. Initialised with W = the class text
features and b = 0 it *is* zero-shot CLIP (Classifier-C); initialised at
random (Classifier-R) it differs only in where training starts, which is the
comparison the noisy-label analysis makes.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class LinearHead(nn.Module):
    def __init__(self, weight: torch.Tensor, scale: torch.Tensor | float, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone().float())
        self.bias = nn.Parameter(torch.zeros(weight.shape[0])) if bias else None
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))

    @classmethod
    def random(cls, n_classes: int, dim: int, scale, generator: torch.Generator, bias: bool = True) -> LinearHead:
        """Rows drawn uniformly on the unit sphere: the norm of text-feature rows, no direction preferred."""
        weight = F.normalize(torch.randn(n_classes, dim, generator=generator), dim=-1)
        return cls(weight, scale, bias)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        logits = self.scale * F.normalize(image_features.float(), dim=-1) @ self.weight.T
        return logits if self.bias is None else logits + self.bias
