"""LieRE (Ostmeier et al., ICML 2025): R(r) = exp(x A_x + y A_y), one learnable block-diagonal skew-symmetric
generator per axis, per head and per layer.

A_x and A_y need not commute, so R(r_q)^T R(r_k) is not R(r_k - r_q): LieRE is the one rotary encoding here
whose logits depend on absolute positions. Every 2 x 2 skew matrix is a multiple of J, so at block_size 2 the
generators always commute and LieRE is RoPE-Mixed reparameterised.
"""
import math
from typing import Optional

import torch
from torch import nn

from rpe_bench.pos import register
from rpe_bench.pos.lie import (BlockLieEncoding, matrix_exponential, pair_skew_entries, skew_symmetric,
                               spectral_skew_entries)
from rpe_bench.pos.rope_mixed import axial_rope_frequencies, mixed_frequencies
from rpe_bench.pos.rotary import REFERENCE, ROPE, SPECTRAL, check_init


@register("liere")
class Liere(BlockLieEncoding):
    """Init: each axis's generator has RoPE-Mixed's initial frequencies for that axis (axial magnitudes, one
    random direction per head) in a random rotation of each block, drawn independently for x and y, so for
    b >= 4 A_x and A_y do not commute from the start. LieRE's own init (entries uniform in [0, 2 pi) for
    positions in [0, 1]) has no meaning in patch units; at b = 2 this init is exactly RoPE-Mixed's, with the
    pairs (2n, 2n + 1) instead of (n, n + d/2). That is init=spectral; init=rope starts at axial RoPE of
    rope_base exactly: blocks over whole RoPE pairs (lay_out_pairs), each axis's generator rotating the pairs of
    its section alone, so the generators commute until training moves them. init=reference is LieRE's own:
    generator entries uniform in [0, 2 pi), scaled for positions in [0, 1] of the image, so it belongs with
    pos.coordinates=fraction."""

    relative = False  # with two axes or more, A_x and A_y do not commute (one axis alone is relative)
    supported_axes = None  # one generator per axis

    def __init__(self, head_dim: int, num_heads: int, block_size: int, rope_base: float, init: str,
                 generator: Optional[torch.Generator] = None, axes: int = 2):
        check_init("liere", init, (SPECTRAL, ROPE, REFERENCE))
        super().__init__(head_dim, num_heads, block_size)
        blocks = (axes, num_heads, self.num_blocks, block_size // 2)
        if init == SPECTRAL:
            frequencies = mixed_frequencies(head_dim, num_heads, rope_base, generator, axes).reshape(blocks)
            entries = spectral_skew_entries(frequencies, generator)
        elif init == ROPE:
            self.lay_out_pairs(torch.arange(head_dim // 2))
            entries = pair_skew_entries(axial_rope_frequencies(head_dim, num_heads, rope_base, axes).reshape(blocks))
        else:
            entries = torch.rand(*blocks[:3], block_size * (block_size - 1) // 2, generator=generator) * 2 * math.pi
        # (axis, heads, blocks, b (b - 1) / 2): the free entries of each axis's generator.
        self.skew_entries = nn.Parameter(entries)

    def generators(self) -> torch.Tensor:
        """One generator per axis, (axes, heads, blocks, b, b)."""
        return skew_symmetric(self.skew_entries, self.block_size)

    def block_rotations(self, coords: torch.Tensor) -> torch.Tensor:
        positions = coords[:, :, None, None, None, None]
        generators = self.generators()
        exponent = positions[:, 0] * generators[0]
        for axis in range(1, generators.shape[0]):
            exponent = exponent + positions[:, axis] * generators[axis]
        return matrix_exponential(exponent)
