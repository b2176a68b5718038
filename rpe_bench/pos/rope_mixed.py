"""RoPE-Mixed (Heo et al. 2024): learnable frequencies per head, each pair rotating along its own direction
in the (x, y) plane."""
from typing import Optional

import torch
from torch import nn

from rpe_bench.pos import register
from rpe_bench.pos.rotary import (REFERENCE, ROPE, SPECTRAL, RotaryEncoding, axial_pairs, axial_sections, axis_names,
                                 check_init, random_frames, section_frequencies)


def mixed_frequencies(head_dim: int, num_heads: int, base: float, generator: Optional[torch.Generator] = None,
                      axes: int = 2) -> torch.Tensor:
    """The RoPE-ViT init, (axes, heads, d/2): the pairs split into one section per axis (axial_sections), each
    section with axial magnitudes m_t, pointing along one direction of a random frame per head (random_frames,
    drawn from `generator`). With two axes: the first d/4 pairs along (cos a, sin a), the next d/4 along the
    perpendicular a + pi/2."""
    sections = axial_sections(head_dim, axes)
    magnitudes = torch.cat([section_frequencies(pairs, base) for pairs in sections])
    section_of_pair = torch.repeat_interleave(torch.arange(axes), torch.tensor(sections))
    directions = random_frames(num_heads, axes, generator)[:, section_of_pair, :]  # (heads, d/2, axes)
    return torch.stack([magnitudes * directions[..., axis] for axis in range(axes)])


def axial_rope_frequencies(head_dim: int, num_heads: int, base: float, axes: int = 2) -> torch.Tensor:
    """Axial RoPE's frequencies as (axes, heads, d/2): each pair follows its own axis alone."""
    frequencies, axis_of_pair = axial_pairs(head_dim, axes, base)
    theta = torch.stack([torch.where(axis_of_pair == axis, frequencies, 0.0) for axis in range(axes)])
    return theta[:, None].expand(-1, num_heads, -1)


@register("rope_mixed")
class RopeMixed(RotaryEncoding):
    """One learnable frequency vector per axis (theta_x, theta_y; theta_index for the flat index; theta_t, ...
    over (t, x, y)). Its YAML's rope_base is 10, as rope-vit builds its mixed models (its axial ones use 100).
    init: `spectral`, rope-vit's (mixed_frequencies; `reference` names the same), or `rope`, axial RoPE's
    frequencies exactly."""

    supported_axes = None

    def __init__(self, head_dim: int, num_heads: int, rope_base: float, init: str,
                 generator: Optional[torch.Generator] = None, axes: int = 2):
        check_init("rope_mixed", init, (SPECTRAL, ROPE, REFERENCE))
        self.sections, self.axis_names = axial_sections(head_dim, axes), axis_names(axes)
        super().__init__(head_dim, num_heads)
        start = (axial_rope_frequencies(head_dim, num_heads, rope_base, axes) if init == ROPE
                 else mixed_frequencies(head_dim, num_heads, rope_base, generator, axes))
        for name, theta in zip(self.axis_names, start):
            self.register_parameter(f"theta_{name}", nn.Parameter(theta.clone()))

    def frequencies(self) -> torch.Tensor:
        return torch.stack([getattr(self, f"theta_{name}") for name in self.axis_names])
