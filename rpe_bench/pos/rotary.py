"""The one RoPE rotation every rotary variant uses, and the axial frequencies they start from.

Layout, "rotate-half": rotation pair n (n < head_dim / 2) is the channels (n, n + head_dim / 2), rotated by
angle phi_n = theta_x[n] * x + theta_y[n] * y. Axial RoPE uses the first half of the pairs for x and the
second half for y. The interleaved layout (2n, 2n + 1) is the same family up to a fixed channel permutation,
but mixing the two silently breaks equivalence with pretrained or reference code, so only this one exists.
"""
from typing import Tuple

import torch

from rpe_bench.pos.base import PositionEncoding


def check_rotary_head_dim(head_dim: int) -> None:
    if head_dim < 4 or head_dim % 4:
        raise ValueError(f"head_dim={head_dim} is not allowed for a rotary position encoding: it must be a "
                         f"positive multiple of 4 (pairs of channels, half of the pairs for x and half for y)")


def axial_frequencies(head_dim: int, base: float) -> torch.Tensor:
    """theta_t = base^(-t / (head_dim / 4)), t < head_dim / 4 (RoPE-ViT axial; base 100 for images)."""
    if base <= 0:
        raise ValueError(f"rope_base={base} must be > 0")
    quarter = head_dim // 4
    return base ** (-torch.arange(quarter, dtype=torch.float32) / quarter)


def rotary_angles(coords: torch.Tensor, theta_x: torch.Tensor, theta_y: torch.Tensor) -> torch.Tensor:
    """(heads or 1, tokens, head_dim / 2) angles from coords (tokens, 2) and frequencies (heads or 1, d / 2).

    Elementwise products, not a matmul: autocast would run a matmul in bf16, whose 8-bit mantissa turns
    position * frequency into an angle error of several degrees at the far side of the grid."""
    coords = coords.to(theta_x.dtype)
    return coords[:, 0, None] * theta_x[:, None, :] + coords[:, 1, None] * theta_y[:, None, :]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rotation(q: torch.Tensor, k: torch.Tensor, angles: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rotate each pair (n, n + d/2) of q and k by angles[..., n]; q and k keep their dtype."""
    cos = angles.cos().repeat(1, 1, 2).to(q.dtype)
    sin = angles.sin().repeat(1, 1, 2).to(q.dtype)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


class RotaryEncoding(PositionEncoding):
    """A rotation with angles linear in the position: frequencies() -> (theta_x, theta_y), (heads or 1, d/2)."""

    def __init__(self, head_dim: int, num_heads: int):
        check_rotary_head_dim(head_dim)
        super().__init__(head_dim, num_heads)

    def frequencies(self) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def rotate(self, q: torch.Tensor, k: torch.Tensor, coords: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return apply_rotation(q, k, rotary_angles(coords, *self.frequencies()))
