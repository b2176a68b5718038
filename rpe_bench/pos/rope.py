"""Axial RoPE (RoPE-ViT "axial") over any number of axes: fixed frequencies, each axis rotating its own
section of the pairs (for (x, y): half follow x and half follow y)."""
import torch

from rpe_bench.pos import register
from rpe_bench.pos.rotary import RotaryEncoding, axial_sections, section_frequencies


@register("rope")
class AxialRope(RotaryEncoding):
    starts_as_rope = True
    supported_axes = None  # any number

    def __init__(self, head_dim: int, num_heads: int, rope_base: float, axes: int = 2):
        self.sections = axial_sections(head_dim, axes)
        super().__init__(head_dim, num_heads)
        theta = torch.zeros(axes, 1, head_dim // 2)
        start = 0
        for axis, pairs in enumerate(self.sections):
            theta[axis, 0, start:start + pairs] = section_frequencies(pairs, rope_base)
            start += pairs
        # A buffer, not a parameter: fixed, and implied by the config, so kept out of the state_dict.
        self.register_buffer("theta", theta, persistent=False)

    def frequencies(self) -> torch.Tensor:
        return self.theta
