"""The one RoPE rotation every rotary variant uses, and the axial frequencies they start from.

Layout, "rotate-half": rotation pair n (n < head_dim / 2) is the channels (n, n + head_dim / 2), rotated by
angle phi_n = sum_i theta_i[n] r_i over the position's axes r = (x, y), (index) or (t, x, y). Axial RoPE
gives each axis a contiguous section of the pairs (axial_sections): for two axes the first half for x and the
second half for y. The interleaved layout (2n, 2n + 1) is the same family up to a fixed channel permutation,
but mixing the two silently breaks equivalence with pretrained or reference code, so only this one exists.
"""
import math
from typing import Tuple

import torch

from rpe_bench.pos.base import PositionEncoding


def section_frequencies(pairs: int, base: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """theta_t = base^(-t / pairs), t < pairs: one axis's frequencies over its section of the pairs."""
    if base <= 0:
        raise ValueError(f"rope_base={base} must be > 0")
    return base ** (-torch.arange(pairs, dtype=dtype) / pairs)


def computed_in(dtype: torch.dtype) -> torch.dtype:
    """The dtype a constant is computed in for a module of `dtype`: float64 for float64, else float32 (then
    cast), so half precisions round float32 values instead of computing in half."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def axial_frequencies(head_dim: int, base: float) -> torch.Tensor:
    """theta_t = base^(-t / (head_dim / 4)), t < head_dim / 4: one axis of two (RoPE-ViT axial; base 100 for
    images), where the frequencies of RoPE-Mixed, Circulant, LieRE and ComRoPE start."""
    return section_frequencies(head_dim // 4, base)


def axial_sections(head_dim: int, axes: int) -> list[int]:
    """How many rotation pairs each axis gets: the head_dim / 2 pairs split as evenly as they go, the first axes
    taking one more where they do not divide (mRoPE's sections), e.g. 16 pairs over (t, x, y) -> 6, 5, 5."""
    pairs = head_dim // 2
    if head_dim % 2 or pairs < axes:
        raise ValueError(f"head_dim={head_dim} is not allowed for axial RoPE over {axes} axes: it must be even "
                         f"with at least one pair of channels per axis (head_dim >= {2 * axes})")
    return [pairs // axes + (axis < pairs % axes) for axis in range(axes)]


def axial_pairs(head_dim: int, axes: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Axial RoPE pair by pair: (frequency (d/2,), axis (d/2,) long) of each rotation pair (n, n + d/2)."""
    sections = axial_sections(head_dim, axes)
    frequencies = torch.cat([section_frequencies(pairs, base) for pairs in sections])
    return frequencies, torch.repeat_interleave(torch.arange(axes), torch.tensor(sections))


# pos.options.init of the learnable rotary encodings: where their frequencies or generators start.
SPECTRAL, ROPE, REFERENCE = "spectral", "rope", "reference"


def check_init(encoding: str, init: str, allowed: tuple[str, ...], why: str = "") -> None:
    if init not in allowed:
        raise ValueError(f"init={init!r} is not allowed for {encoding}{why}: allowed {', '.join(allowed)}")


def axis_names(axes: int) -> tuple[str, ...]:
    """Names of the position's axes, for parameters that belong to one axis (theta_x, c_y, ...)."""
    return {1: ("index",), 2: ("x", "y"), 3: ("t", "x", "y")}.get(axes) or tuple(f"axis{axis}" for axis in range(axes))


def haar_rotations(batch: tuple[int, ...], size: int, generator=None, dtype=torch.float32) -> torch.Tensor:
    """(*batch, size, size) rotations, Haar on SO(size): QR of a Gaussian with the signs of R's diagonal moved
    into Q (Haar on O(size), Mezzadri 2007), then one column flipped where det = -1."""
    gaussian = torch.randn(*batch, size, size, generator=generator, dtype=dtype)
    basis, triangle = torch.linalg.qr(gaussian)
    basis = basis * torch.diagonal(triangle, dim1=-2, dim2=-1).sign().unsqueeze(-2)
    basis[..., 0] *= torch.linalg.det(basis).sign().unsqueeze(-1)
    return basis


def random_frames(num_heads: int, axes: int, generator=None) -> torch.Tensor:
    """(heads, axes, axes): per head an orthonormal frame of the position space, row i the direction of the
    i-th section of frequencies (RoPE-Mixed's init). With two axes, RoPE-ViT's: one uniform angle a per head,
    rows at a and a + pi/2; otherwise a Haar rotation."""
    if axes == 2:
        angle = torch.rand(num_heads, 1, generator=generator) * 2 * math.pi
        angles = torch.cat([angle, angle + math.pi / 2], dim=1)
        return torch.stack([angles.cos(), angles.sin()], dim=-1)
    return haar_rotations((num_heads,), axes, generator).transpose(-1, -2)


def rotary_angles(coords: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """(heads or 1, tokens, head_dim / 2) angles from coords (tokens, axes) and frequencies (axes, heads or 1,
    d / 2), summed axis by axis.

    Elementwise products, not a matmul: autocast would run a matmul in bf16, whose 8-bit mantissa turns
    position * frequency into an angle error of several degrees at the far side of the grid."""
    coords = coords.to(theta.dtype)
    angles = coords[:, 0, None] * theta[0][:, None, :]
    for axis in range(1, theta.shape[0]):
        angles = angles + coords[:, axis, None] * theta[axis][:, None, :]
    return angles


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rotation(q: torch.Tensor, k: torch.Tensor, angles: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rotate each pair (n, n + d/2) of q and k by angles[..., n]; q and k keep their dtype."""
    cos = angles.cos().repeat(1, 1, 2).to(q.dtype)
    sin = angles.sin().repeat(1, 1, 2).to(q.dtype)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


class RotaryEncoding(PositionEncoding):
    """A rotation with angles linear in the position: frequencies() -> (axes, heads or 1, d/2), one frequency
    vector per axis. Subclasses check their head dim with axial_sections."""

    def frequencies(self) -> torch.Tensor:
        raise NotImplementedError

    def rotate(self, q: torch.Tensor, k: torch.Tensor, coords: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return apply_rotation(q, k, rotary_angles(coords, self.frequencies()))
