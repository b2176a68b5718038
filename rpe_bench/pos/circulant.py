"""Circulant-STRING (Schenck et al. 2025): generators L_i = C_i - C_i^T with C_i circulant, learnable c_i.

Circulant matrices share the Fourier eigenbasis, so exp(x L_x + y L_y) = Q^T RoPE-Mixed(r) Q for a fixed
real Fourier basis Q: the encoding is RoPE-Mixed with frequencies derived from c_x, c_y, in the basis Q,
which the attention folds into its projections like any STRING basis.

Derivation. C[j, m] = c[(j - m) mod d] (first column c), so C z = c * z (circular convolution) and
FFT(C z) = FFT(c) FFT(z); C^T convolves with c reversed, whose FFT is conj(FFT(c)) for real c. L = C - C^T
thus has eigenvalue i omega_n on the complex mode e_n[j] = exp(2 pi i j n / d), with
omega_n = 2 Im FFT(c)_n. On the real pair w_n = sin(2 pi j n / d), u_n = cos(2 pi j n / d) (each scaled to
unit length), L w_n = omega_n u_n and L u_n = -omega_n w_n: the pair (w_n, u_n) rotates by the angle
x omega^x_n + y omega^y_n. Modes 0 and d/2 have omega = 0 (they never rotate) and form one pair at angle 0.
"""
import math
from typing import Optional

import torch
from torch import nn

from rpe_bench.pos import register
from rpe_bench.pos.rope_mixed import mixed_frequencies
from rpe_bench.pos.rotary import SPECTRAL, RotaryEncoding, axial_sections, axis_names, check_init


def real_fourier_basis(dim: int) -> torch.Tensor:
    """Orthogonal Q (d, d), float64, whose rows are the rotate-half pairs: row n and row n + d/2 are
    (w_n+1, u_n+1) for the rotating modes 1 .. d/2 - 1, and the last pair is (u_0, u_d/2)."""
    half = dim // 2
    phase = 2 * math.pi * torch.arange(1, half, dtype=torch.float64)[:, None] * torch.arange(dim) / dim
    scale = math.sqrt(2 / dim)
    constant = torch.full((1, dim), 1 / math.sqrt(dim), dtype=torch.float64)
    alternating = (-1.0) ** torch.arange(dim, dtype=torch.float64)[None] / math.sqrt(dim)
    return torch.cat([scale * phase.sin(), constant, scale * phase.cos(), alternating])


def circulant_frequencies(c: torch.Tensor) -> torch.Tensor:
    """(heads, d/2) pair frequencies from c (heads, d): omega_n = 2 Im FFT(c)_n for modes 1 .. d/2 - 1, then
    0 for the non-rotating pair."""
    omega = 2 * torch.fft.rfft(c).imag[:, 1:-1]
    return torch.cat([omega, omega.new_zeros(omega.shape[0], 1)], dim=1)


def circulant_from_frequencies(omega: torch.Tensor, dim: int) -> torch.Tensor:
    """The c (heads, d) whose rotating modes 1 .. d/2 - 1 have frequencies omega (heads, d/2 - 1): the inverse
    of circulant_frequencies, keeping only the antisymmetric part of c, the one L depends on."""
    spectrum = torch.zeros(omega.shape[0], dim // 2 + 1, dtype=torch.complex64)
    spectrum[:, 1:-1] = 0.5j * omega
    return torch.fft.irfft(spectrum, n=dim)


@register("circulant")
class CirculantString(RotaryEncoding):
    """Init: c_x, c_y are chosen so that the rotating modes start at RoPE-Mixed's initial frequencies (axial
    magnitudes with RoPE-Mixed's default base 10, a random direction per head), the smallest of them dropped
    for the non-rotating pair; a small random c would start almost without positional signal."""

    folds = True
    supported_axes = None  # one circulant generator per axis (c_x, c_y; c_index; c_t, c_x, c_y)

    def __init__(self, head_dim: int, num_heads: int, rope_base: float = 10.0, init: str = SPECTRAL,
                 generator: Optional[torch.Generator] = None, axes: int = 2):
        check_init("circulant", init, (SPECTRAL,), why=" (its generators are circulant: their rotating planes are "
                                                      "fixed Fourier modes, never RoPE's channel pairs; and it has "
                                                      "no public reference code to start as)")
        self.sections, self.axis_names = axial_sections(head_dim, axes), axis_names(axes)
        super().__init__(head_dim, num_heads)
        rotating = head_dim // 2 - 1
        for name, theta in zip(self.axis_names, mixed_frequencies(head_dim, num_heads, rope_base, generator, axes)):
            self.register_parameter(f"c_{name}", nn.Parameter(circulant_from_frequencies(theta[:, :rotating],
                                                                                         head_dim)))
        self.register_exact_buffer("fourier_basis", lambda dtype: real_fourier_basis(head_dim).to(dtype))

    def frequencies(self) -> torch.Tensor:
        return torch.stack([circulant_frequencies(getattr(self, f"c_{name}")) for name in self.axis_names])

    def basis(self) -> torch.Tensor:
        return self.fourier_basis.expand(self.num_heads, -1, -1)
