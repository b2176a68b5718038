"""ComRoPE (Yu et al. 2025): R(r) = blockdiag_j exp(s_j(r) B_j), one learnable skew-symmetric B_j per block (per
head and layer) scaled by a position s_j(r) = sum_i c_ij r_i (c_xj x + c_yj y over (x, y)). Each axis's
generator is blockdiag_j(c_ij B_j), and any two of them commute block by block, so R(r_q)^T R(r_k) =
R(r_k - r_q): exactly translation invariant.

- comrope_ap (axis partition): block j serves axis j mod D alone: c_ij = 1 if i = j mod D, else 0.
- comrope_ld (linear dependence): every block serves every axis, with learnable c_ij.

Commuting would also allow exp(s_j B_j) = exp(c_xj x B_j) exp(c_yj y B_j), exponentials per distinct coordinate
value (16 on the CIFAR grid instead of 65 tokens), but gathering them back per token costs more in the backward
pass than it saves at these sizes, so the exponential is taken per token as for LieRE.
"""
from typing import Optional

import torch
from torch import nn

from rpe_bench.pos import register
from rpe_bench.pos.lie import (BlockLieEncoding, matrix_exponential, pair_skew_entries, skew_symmetric,
                               spectral_skew_entries)
from rpe_bench.pos.rotary import (REFERENCE, ROPE, SPECTRAL, axial_pairs, axial_sections, check_init, random_frames,
                                 section_frequencies)


# ComRoPE's own init (init=reference): B_j = F - F^T with F's entries N(0, REFERENCE_INIT_STD^2), its default.
REFERENCE_INIT_STD = 1.0


def reference_skew_entries(num_heads: int, blocks: int, size: int, generator) -> torch.Tensor:
    """ComRoPE's B_j = F - F^T, F ~ N(0, 1) entrywise, as strictly-upper entries (heads, blocks, b (b - 1) / 2)."""
    free = torch.randn(num_heads, blocks, size, size, generator=generator) * REFERENCE_INIT_STD
    rows, cols = torch.triu_indices(size, size, offset=1)
    return (free - free.transpose(-1, -2))[..., rows, cols]


class ComRope(BlockLieEncoding):
    """Subclasses set `skew_entries` (heads, blocks, b (b - 1) / 2), the free entries of each B_j, and give
    `axis_scales`."""

    skew_entries: nn.Parameter
    supported_axes = None

    def axis_scales(self) -> torch.Tensor:
        """c, (axis, heads or 1, blocks)."""
        raise NotImplementedError

    def block_rotations(self, coords: torch.Tensor) -> torch.Tensor:
        scales = self.axis_scales()
        positions = coords[:, 0, None, None] * scales[0]  # s_j(r), (tokens, heads, blocks)
        for axis in range(1, scales.shape[0]):
            positions = positions + coords[:, axis, None, None] * scales[axis]
        return matrix_exponential(positions[..., None, None] * skew_symmetric(self.skew_entries, self.block_size))


@register("comrope_ap")
class ComRopeAxisPartition(ComRope):
    """Block j follows axis j mod D alone, so with 4 blocks over (t, x, y) the axes get 2, 1 and 1 blocks. Init:
    axial RoPE's frequencies, each block taking the next b/2 of its axis's (base^(-t / n) over the n frequencies
    its blocks hold), in a random rotation of each block; at b = 2 over (x, y) exactly axial RoPE with the pairs
    (2n, 2n + 1) alternating between x and y. That is init=spectral; init=rope is axial RoPE of rope_base
    exactly: the blocks of axis i hold its section's RoPE pairs in order (lay_out_pairs), which needs each
    section to fill its blocks (16 pairs in blocks of 4 over (x, y): yes; over (t, x, y), 6, 5, 5 pairs: no).
    init=reference is ComRoPE's own (reference_skew_entries), for positions in [0, 1] (pos.coordinates=fraction)."""

    def __init__(self, head_dim: int, num_heads: int, block_size: int, rope_base: float, init: str,
                 generator: Optional[torch.Generator] = None, axes: int = 2):
        check_init("comrope_ap", init, (SPECTRAL, ROPE, REFERENCE))
        super().__init__(head_dim, num_heads, block_size)
        if self.num_blocks < axes:
            allowed = [size for size in range(2, head_dim // axes + 1, 2) if head_dim % size == 0]
            raise ValueError(f"block_size={block_size} is not allowed with head_dim={head_dim} for comrope_ap over "
                             f"{axes} axes: each axis needs a block of its own, so the head dim must hold at least "
                             f"{axes} blocks; allowed: {allowed or 'none'}")
        axis_of_block = torch.arange(self.num_blocks) % axes
        blocks_per_axis = [int((axis_of_block == axis).sum()) for axis in range(axes)]
        per_axis = [section_frequencies(blocks * block_size // 2, rope_base).view(blocks, block_size // 2)
                    for blocks in blocks_per_axis]
        # Block j is the (j // D)-th block of its axis.
        frequencies = torch.stack([per_axis[block % axes][block // axes] for block in range(self.num_blocks)])
        if init == SPECTRAL:
            entries = spectral_skew_entries(frequencies.expand(num_heads, -1, -1), generator)
        elif init == ROPE:
            entries = self.rope_layout(head_dim, block_size, rope_base, axes, blocks_per_axis, num_heads)
        else:
            entries = reference_skew_entries(num_heads, self.num_blocks, block_size, generator)
        self.skew_entries = nn.Parameter(entries)
        serving = torch.stack([(axis_of_block == axis).float() for axis in range(axes)])
        self.register_buffer("serving", serving[:, None], persistent=False)

    def rope_layout(self, head_dim: int, block_size: int, base: float, axes: int, blocks_per_axis: list[int],
                    num_heads: int) -> torch.Tensor:
        """init=rope: lays axis i's RoPE pairs over its blocks in order; returns the blocks' skew entries."""
        sections, half = axial_sections(head_dim, axes), block_size // 2
        if [blocks * half for blocks in blocks_per_axis] != sections:
            raise ValueError(f"init='rope' is not allowed for comrope_ap with block_size={block_size} over {axes} "
                             f"axes: its blocks give the axes {[blocks * half for blocks in blocks_per_axis]} pairs "
                             f"and axial RoPE {sections}; allowed: init=spectral, or a block size that splits alike")
        frequencies, _ = axial_pairs(head_dim, axes, base)
        starts = [sum(sections[:axis]) for axis in range(axes)]
        pair_order = torch.cat([torch.arange(half) + starts[block % axes] + (block // axes) * half
                                for block in range(self.num_blocks)])
        self.lay_out_pairs(pair_order)
        return pair_skew_entries(frequencies[pair_order].view(self.num_blocks, half)).expand(num_heads, -1, -1).clone()

    def axis_scales(self) -> torch.Tensor:
        return self.serving


@register("comrope_ld")
class ComRopeLinearDependence(ComRope):
    """Init: RoPE-Mixed's. B_j has RoPE-Mixed's magnitudes (axial ones per section of the pairs, one section per
    axis), the next b/2 of them per block, in a random rotation of the block; per head a random frame
    (random_frames), each block scaled along the direction of the section its first pair is in: over (x, y)
    the first half of the blocks along (cos a, sin a), the others along a + pi/2. At b = 2 this is exactly
    RoPE-Mixed's init, with the pairs (2n, 2n + 1). With one block (b = head dim) every pair follows the same
    direction c: R depends on c . r alone, a limit of the method, not of the init. That is init=spectral;
    init=rope is axial RoPE of rope_base exactly: blocks over whole RoPE pairs (lay_out_pairs), each B_j with its
    pairs' axial frequencies and c one-hot on their axis, which needs no block to straddle two axes' sections.
    init=reference is ComRoPE's own (reference_skew_entries, multipliers N(0, 1)), for positions in [0, 1] of the
    image (pos.coordinates=fraction)."""

    def __init__(self, head_dim: int, num_heads: int, block_size: int, rope_base: float, init: str,
                 generator: Optional[torch.Generator] = None, axes: int = 2):
        check_init("comrope_ld", init, (SPECTRAL, ROPE, REFERENCE))
        super().__init__(head_dim, num_heads, block_size)
        if init == ROPE:
            self.start_as_rope(head_dim, num_heads, block_size, rope_base, axes)
            return
        if init == REFERENCE:  # ComRoPE's: B_j as for AP, multipliers N(0, 1), one per (axis, block) for all heads
            self.skew_entries = nn.Parameter(reference_skew_entries(num_heads, self.num_blocks, block_size, generator))
            scales = torch.randn(axes, 1, self.num_blocks, generator=generator)
            self.scales = nn.Parameter(scales.expand(-1, num_heads, -1).clone())
            return
        sections = axial_sections(head_dim, axes)
        magnitudes = torch.cat([section_frequencies(pairs, rope_base) for pairs in sections])
        magnitudes = magnitudes.view(self.num_blocks, block_size // 2)
        self.skew_entries = nn.Parameter(spectral_skew_entries(magnitudes.expand(num_heads, -1, -1), generator))
        section_of_pair = torch.repeat_interleave(torch.arange(axes), torch.tensor(sections))
        section_of_block = section_of_pair[::block_size // 2]
        directions = random_frames(num_heads, axes, generator)[:, section_of_block, :]  # (heads, blocks, axes)
        # (axis, heads, blocks): c_ij.
        self.scales = nn.Parameter(torch.stack([directions[..., axis] for axis in range(axes)]))

    def start_as_rope(self, head_dim: int, num_heads: int, block_size: int, base: float, axes: int) -> None:
        frequencies, axis_of_pair = axial_pairs(head_dim, axes, base)
        axis_of_pair = axis_of_pair.view(self.num_blocks, block_size // 2)
        if (axis_of_pair != axis_of_pair[:, :1]).any():
            raise ValueError(f"init='rope' is not allowed for comrope_ld with block_size={block_size} over {axes} "
                             f"axes: a block would hold pairs of two axes (axial RoPE gives them "
                             f"{axial_sections(head_dim, axes)} pairs); allowed: init=spectral, or a block size "
                             f"that divides every axis's pairs")
        self.lay_out_pairs(torch.arange(head_dim // 2))
        entries = pair_skew_entries(frequencies.view(self.num_blocks, block_size // 2))
        self.skew_entries = nn.Parameter(entries.expand(num_heads, -1, -1).clone())
        block_axis = axis_of_pair[:, 0]
        self.scales = nn.Parameter(torch.stack([(block_axis == axis).float().expand(num_heads, -1)
                                                for axis in range(axes)]))

    def axis_scales(self) -> torch.Tensor:
        return self.scales
