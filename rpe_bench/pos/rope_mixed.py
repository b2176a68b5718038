"""RoPE-Mixed (Heo et al. 2024): learnable frequencies per head, each pair rotating along its own direction
in the (x, y) plane."""
import math
from typing import Optional, Tuple

import torch
from torch import nn

from rpe_bench.pos import register
from rpe_bench.pos.rotary import RotaryEncoding, axial_frequencies


def mixed_frequencies(head_dim: int, num_heads: int, base: float,
                      generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The RoPE-ViT init, (heads, d/2) each: axial magnitudes m_t; per head one random direction a (drawn from
    `generator`), the first d/4 pairs along (cos a, sin a) and the next d/4 along the perpendicular a + pi/2."""
    magnitudes = axial_frequencies(head_dim, base)
    directions = torch.rand(num_heads, 1, generator=generator) * 2 * math.pi
    directions = torch.cat([directions.expand(-1, magnitudes.numel()),
                            (directions + math.pi / 2).expand(-1, magnitudes.numel())], dim=1)
    magnitudes = magnitudes.repeat(2)
    return magnitudes * directions.cos(), magnitudes * directions.sin()


@register("rope_mixed")
class RopeMixed(RotaryEncoding):
    """rope_base defaults to 10, as rope-vit builds its mixed models (its axial models use 100)."""

    def __init__(self, head_dim: int, num_heads: int, rope_base: float,
                 generator: Optional[torch.Generator] = None):
        super().__init__(head_dim, num_heads)
        theta_x, theta_y = mixed_frequencies(head_dim, num_heads, rope_base, generator)
        self.theta_x = nn.Parameter(theta_x)
        self.theta_y = nn.Parameter(theta_y)

    def frequencies(self) -> torch.Tensor:
        return torch.stack([self.theta_x, self.theta_y])
