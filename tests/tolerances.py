"""Tolerances derived from the dtype's unit roundoff and the size of the computation, not from the errors one
machine happened to show: another CPU (Intel or AMD, other SIMD widths, other BLAS kernels) sums in another order
and rounds differently, within these bounds.

The model: a chain of k sequential roundings on values of size 1 is off by about k u (Higham's gamma_k); a
length-n dot product is one such chain of n. SAFETY covers the constants that model leaves out (the
accumulation order, magnitudes a little above 1); a real defect (a matrix that is not orthogonal, a shift that
changes the logits) is off by orders of magnitude more."""
import math

import torch

from rpe_bench.pos import lie

SAFETY = 8


def unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


def chain_bound(roundings: int, dtype: torch.dtype, magnitude: float = 1.0) -> float:
    """The error of `roundings` sequential roundings on values of size `magnitude`, with the safety factor."""
    return SAFETY * roundings * unit_roundoff(dtype) * magnitude


def squarings(exponents: torch.Tensor) -> int:
    """How many squarings rpe_bench.pos.lie.matrix_exponential applies to the largest of `exponents`."""
    norm = exponents.detach().abs().sum(-2).amax().item()
    return max(0, math.ceil(math.log2(norm / lie._SCALED_NORM))) if norm > 0 else 0


def exponential_roundings(exponents: torch.Tensor) -> int:
    """Sequential roundings behind each entry of exp(A) for (..., n, n) exponents: every n x n product of the
    Taylor polynomial's Paterson-Stockmeyer chain and of the squarings is a length-n dot product."""
    size = exponents.shape[-1]
    polynomial_products = lie._TAYLOR_DEGREE[exponents.dtype] // 4 + 4
    return size * (polynomial_products + squarings(exponents))


def orthogonality_bound(exponents: torch.Tensor) -> float:
    """max |R^T R - I| for R = exp(A): R's rounding, then one more length-n product."""
    return chain_bound(exponential_roundings(exponents) + exponents.shape[-1], exponents.dtype)


def determinant_bound(exponents: torch.Tensor) -> float:
    """|det R - 1|: det(I + F) - 1 is about trace F, a sum of n entries each off by the orthogonality bound."""
    return exponents.shape[-1] * orthogonality_bound(exponents)


def fp32_angle_bound(coords: torch.Tensor, frequencies_bound: float = 1.0) -> float:
    """The error of an angle r * theta whose theta was rounded to fp32 (a frequency table built in fp32 whatever
    the module's dtype): one fp32 rounding of theta, scaled by the largest |r theta|."""
    return chain_bound(1, torch.float32, coords.abs().max().item() * frequencies_bound)


def rotated_logit_bound(q: torch.Tensor, k: torch.Tensor, angle_error: float) -> float:
    """|q^T R_a k - q^T R_b k| when the rotations' angles differ by at most `angle_error` on each side: every
    channel pair's term moves by at most |q_i| |k_i| 2 angle_error."""
    return 2 * angle_error * (q.abs() @ k.abs().transpose(-1, -2)).max().item()
