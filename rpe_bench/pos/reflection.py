"""Reflection-STRING (our definition): P = H_1 H_2 ... H_k, H_i = I - 2 v_i v_i^T / |v_i|^2, v_i learnable."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from rpe_bench.pos import register
from rpe_bench.pos.rope import AxialRope


def householder_basis(vectors: torch.Tensor) -> torch.Tensor:
    """H_1 ... H_k per head from vectors (heads, k, d), any non-zero length, as a (heads, d, d) matrix.

    Compact WY form (Schreiber and Van Loan 1989): with unit columns V = [v_1 .. v_k],
    H_1 ... H_k = I - V T^-1 V^T, T = the upper triangle of V^T V with its diagonal halved. One batched
    triangular solve replaces k sequential d x d products. torch.linalg.householder_product cannot be used:
    it follows LAPACK's QR convention, zeroing the first i - 1 entries of v_i and setting the i-th to 1,
    so it only reaches structured vectors, not free ones."""
    unit = F.normalize(vectors, dim=-1)
    count, dim = unit.shape[-2:]
    triangle = (unit @ unit.transpose(1, 2)).triu(1) + 0.5 * torch.eye(count, dtype=unit.dtype, device=unit.device)
    correction = unit.transpose(1, 2) @ torch.linalg.solve_triangular(triangle, unit, upper=True)
    return torch.eye(dim, dtype=unit.dtype, device=unit.device) - correction


@register("reflection")
class ReflectionString(AxialRope):
    """k reflections per head (default k = head_dim, which reaches all of O(d)).

    Init: random Gaussian directions, each used twice in a row (v_2i = v_2i+1). A reflection is its own
    inverse, so P = I exactly and training starts from exact RoPE, as Cayley-STRING does; the pairs still
    get gradients, since H(a) H(b) is a rotation by twice the angle between a and b. For odd k the last
    vector has no partner and P starts as one reflection (det -1): still orthogonal and well conditioned,
    the same logits as RoPE up to that fixed change of basis, and any product of an odd number of
    reflections keeps det -1, so I is out of reach."""

    folds = True  # and P = I at init for even k (the default, k = head_dim)

    def __init__(self, head_dim: int, num_heads: int, k: Optional[int], rope_base: float,
                 generator: Optional[torch.Generator] = None, axes: int = 2):
        count = head_dim if k is None else k
        if count < 1:
            raise ValueError(f"k={k} must be >= 1 (the number of reflections), or null for head_dim")
        super().__init__(head_dim, num_heads, rope_base, axes)
        directions = torch.randn(num_heads, (count + 1) // 2, head_dim, generator=generator)
        self.vectors = nn.Parameter(directions.repeat_interleave(2, dim=1)[:, :count].clone())

    def basis(self) -> torch.Tensor:
        return householder_basis(self.vectors)
