"""ComRoPE (Yu et al. 2025): R(r) = blockdiag_j exp(s_j(r) B_j), one learnable skew-symmetric B_j per block (per
head and layer) scaled by a position s_j(r) = c_xj x + c_yj y. Each axis's generator is blockdiag_j(c_ij B_j),
and any two of them commute block by block, so R(r_q)^T R(r_k) = R(r_k - r_q): exactly translation invariant.

- comrope_ap (axis partition): block j serves axis j mod 2 alone: c_ij = 1 if i = j mod 2, else 0.
- comrope_ld (linear dependence): every block serves both axes, with learnable c_ij.

Commuting would also allow exp(s_j B_j) = exp(c_xj x B_j) exp(c_yj y B_j), exponentials per distinct coordinate
value (16 on the CIFAR grid instead of 65 tokens), but gathering them back per token costs more in the backward
pass than it saves at these sizes, so the exponential is taken per token as for LieRE.
"""
import math
from typing import Optional

import torch
from torch import nn

from rpe_bench.pos import register
from rpe_bench.pos.lie import BlockLieEncoding, matrix_exponential, skew_symmetric, spectral_skew_entries
from rpe_bench.pos.rotary import axial_frequencies


class ComRope(BlockLieEncoding):
    """Subclasses set `skew_entries` (heads, blocks, b (b - 1) / 2), the free entries of each B_j, and give
    `axis_scales`."""

    skew_entries: nn.Parameter

    def axis_scales(self) -> torch.Tensor:
        """c, (axis, heads or 1, blocks)."""
        raise NotImplementedError

    def block_rotations(self, coords: torch.Tensor) -> torch.Tensor:
        scale_x, scale_y = self.axis_scales()
        positions = coords[:, 0, None, None] * scale_x + coords[:, 1, None, None] * scale_y  # (tokens, heads, blocks)
        return matrix_exponential(positions[..., None, None] * skew_symmetric(self.skew_entries, self.block_size))


@register("comrope_ap")
class ComRopeAxisPartition(ComRope):
    """Init: axial RoPE's frequencies, each block taking the next b/2 of its axis's, in a random rotation of each
    block; at b = 2 exactly axial RoPE with the pairs (2n, 2n + 1) alternating between x and y."""

    def __init__(self, head_dim: int, num_heads: int, block_size: int, rope_base: float,
                 generator: Optional[torch.Generator] = None):
        super().__init__(head_dim, num_heads, block_size)
        if self.num_blocks % 2:
            allowed = [size for size in range(2, head_dim // 2 + 1, 2) if head_dim // 2 % size == 0]
            raise ValueError(f"block_size={block_size} is not allowed with head_dim={head_dim} for comrope_ap: "
                             f"each axis takes half of the blocks, so it must be an even divisor of "
                             f"head_dim / 2; allowed: {allowed or 'none, head_dim / 2 is odd'}")
        per_axis = axial_frequencies(head_dim, rope_base).view(self.num_blocks // 2, block_size // 2)
        frequencies = per_axis.repeat_interleave(2, dim=0).expand(num_heads, -1, -1)
        self.skew_entries = nn.Parameter(spectral_skew_entries(frequencies, generator))
        serves_x = (torch.arange(self.num_blocks) % 2 == 0).float()
        self.register_buffer("serving", torch.stack([serves_x, 1 - serves_x])[:, None], persistent=False)

    def axis_scales(self) -> torch.Tensor:
        return self.serving


@register("comrope_ld")
class ComRopeLinearDependence(ComRope):
    """Init: RoPE-Mixed's. B_j has the axial magnitudes (the list taken twice, as RoPE-Mixed's pairs do), the
    next b/2 of them per block, in a random rotation of the block; per head one random direction a, the first
    half of the blocks scaled along (cos a, sin a), the others along a + pi/2. At b = 2 this is exactly
    RoPE-Mixed's init, with the pairs (2n, 2n + 1). With one block (b = head dim) every pair follows the same
    direction c: R depends on c . r alone, a limit of the method, not of the init."""

    def __init__(self, head_dim: int, num_heads: int, block_size: int, rope_base: float,
                 generator: Optional[torch.Generator] = None):
        super().__init__(head_dim, num_heads, block_size)
        magnitudes = axial_frequencies(head_dim, rope_base).repeat(2).view(self.num_blocks, block_size // 2)
        self.skew_entries = nn.Parameter(spectral_skew_entries(magnitudes.expand(num_heads, -1, -1), generator))
        angle = torch.rand(num_heads, 1, generator=generator) * 2 * math.pi
        directions = angle + math.pi / 2 * (2 * torch.arange(self.num_blocks) >= self.num_blocks)
        # (axis, heads, blocks): c_xj and c_yj.
        self.scales = nn.Parameter(torch.stack([directions.cos(), directions.sin()]))

    def axis_scales(self) -> torch.Tensor:
        return self.scales
