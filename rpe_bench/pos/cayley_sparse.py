"""Sparse-S Cayley-STRING: Cayley-STRING where S keeps only a random fraction f of its free entries."""
from typing import Optional

import torch
from torch import nn

from rpe_bench.pos import register
from rpe_bench.pos.cayley import CayleyString


@register("cayley_sparse")
class SparseCayleyString(CayleyString):
    """Each head keeps round(f * d(d-1)/2) strictly-upper entries of S (at least one), drawn once from
    `generator` (the model derives it from the run seed and the layer); the others stay 0 and have no parameter.
    The kept entries are sorted, so f = 1 is cayley_dense entry for entry."""

    def __init__(self, head_dim: int, num_heads: int, f: float, rope_base: float,
                 generator: Optional[torch.Generator] = None, axes: int = 2):
        if not 0 < f <= 1:
            raise ValueError(f"f={f} must be in (0, 1]: the fraction of free entries of S that are kept")
        super().__init__(head_dim, num_heads, rope_base, axes)
        upper_count = self.free_entries.shape[1]
        kept_count = max(1, round(f * upper_count))
        kept = torch.rand(num_heads, upper_count, generator=generator).argsort(dim=1)[:, :kept_count]
        kept = kept.sort(dim=1).values
        # Persistent, unlike the dense layout: the mask comes from the seed, not from the config alone, so a
        # checkpoint must carry it.
        self.register_buffer("free_entries", self.free_entries.gather(1, kept), persistent=True)
        self.skew_entries = nn.Parameter(torch.zeros(num_heads, kept_count))

