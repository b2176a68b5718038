"""Axial RoPE (RoPE-ViT "axial") over any number of axes: fixed frequencies, each axis rotating its own
section of the pairs (for (x, y): half follow x and half follow y)."""
import torch

from rpe_bench.pos import register
from rpe_bench.pos.rotary import RotaryEncoding, axial_sections, computed_in, section_frequencies


@register("rope")
class AxialRope(RotaryEncoding):
    starts_as_rope = True
    supported_axes = None  # any number

    def __init__(self, head_dim: int, num_heads: int, rope_base: float, axes: int = 2):
        self.sections = axial_sections(head_dim, axes)
        super().__init__(head_dim, num_heads)
        section_frequencies(1, rope_base)  # refuses a base <= 0 here, with the config's other checks

        def build(dtype: torch.dtype) -> torch.Tensor:
            theta = torch.zeros(axes, 1, head_dim // 2, dtype=computed_in(dtype))
            start = 0
            for axis, pairs in enumerate(self.sections):
                theta[axis, 0, start:start + pairs] = section_frequencies(pairs, rope_base, theta.dtype)
                start += pairs
            return theta.to(dtype)

        # A buffer, not a parameter: fixed, and implied by the config, so kept out of the state_dict.
        self.register_exact_buffer("theta", build)

    def frequencies(self) -> torch.Tensor:
        return self.theta
