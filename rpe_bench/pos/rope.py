"""2D axial RoPE (RoPE-ViT "axial"): fixed frequencies, half of the pairs follow x and half follow y."""
from typing import Tuple

import torch

from rpe_bench.pos import register
from rpe_bench.pos.rotary import RotaryEncoding, axial_frequencies


@register("rope")
class AxialRope(RotaryEncoding):
    starts_as_rope = True

    def __init__(self, head_dim: int, num_heads: int, rope_base: float):
        super().__init__(head_dim, num_heads)
        theta = axial_frequencies(head_dim, rope_base)
        zeros = torch.zeros_like(theta)
        # Buffers, not parameters: fixed, and implied by the config, so kept out of the state_dict.
        self.register_buffer("theta_x", torch.cat([theta, zeros])[None], persistent=False)
        self.register_buffer("theta_y", torch.cat([zeros, theta])[None], persistent=False)

    def frequencies(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.theta_x, self.theta_y
