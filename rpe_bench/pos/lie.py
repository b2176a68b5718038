"""Rotations R(r) = exp(sum_i r_i A_i) with learnable block-diagonal skew-symmetric generators A_i, the form
LieRE and ComRoPE share: the head dim is cut into blocks of b channels, each rotated by exp(X_j(r)) with
X_j(r) a b x b skew-symmetric matrix linear in the position r.

R(r) depends on the token, so unlike a STRING basis it cannot fold into the projections: each forward pass
builds the rotations of all tokens, heads and blocks with one batched matrix exponential and applies them to q
and k. Coordinates are whatever the model passes (patch units, CLS at the origin): X(0) = 0, so R = I there.
"""
import math
from typing import Optional, Tuple

import torch

from rpe_bench.numerics import autocast_off
from rpe_bench.pos.base import PositionEncoding
from rpe_bench.pos.rotary import haar_rotations


def check_block_size(head_dim: int, block_size: int) -> None:
    if block_size < 2 or block_size % 2 or head_dim % block_size:
        allowed = [size for size in range(2, head_dim + 1, 2) if head_dim % size == 0]
        raise ValueError(f"block_size={block_size} is not allowed with head_dim={head_dim}: it must be an even "
                         f"divisor of the head dim (a skew-symmetric block of odd size never rotates one of its "
                         f"directions); allowed: {allowed or 'none, the head dim is odd'}")


def skew_symmetric(upper: torch.Tensor, size: int) -> torch.Tensor:
    """(..., size, size) skew-symmetric matrices from their strictly-upper entries (..., size (size - 1) / 2)
    in row-major order. Parameterising the free entries alone leaves no parameter without a gradient."""
    rows, cols = torch.triu_indices(size, size, offset=1, device=upper.device)
    matrix = upper.new_zeros(*upper.shape[:-1], size, size)
    matrix[..., rows, cols] = upper
    return matrix - matrix.transpose(-1, -2)


def spectral_skew_entries(frequencies: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Strictly-upper entries of skew blocks A = Q diag(w_1 J, ..., w_{b/2} J) Q^T, J = [[0, -1], [1, 0]], from
    per-pair frequencies w (..., b/2) and a random rotation Q per block (Haar on SO(b), drawn from `generator`).

    exp(t A) then rotates b/2 planes at exactly the frequencies w, like RoPE, in a random basis of the block: the
    encodings start with RoPE's spectrum in patch units instead of a scale tied to another coordinate system.
    A 2 x 2 rotation commutes with J, so at b = 2 the block is exactly w J."""
    size = 2 * frequencies.shape[-1]
    pairs = torch.arange(0, size, 2)
    canonical = frequencies.new_zeros(*frequencies.shape[:-1], size, size, dtype=torch.float64)
    canonical[..., pairs + 1, pairs] = frequencies.double()
    canonical[..., pairs, pairs + 1] = -frequencies.double()
    # On SO(b), so that at b = 2 Q commutes with J.
    basis = haar_rotations(tuple(frequencies.shape[:-1]), size, generator, dtype=torch.float64)
    rows, cols = torch.triu_indices(size, size, offset=1)
    return (basis @ canonical @ basis.transpose(-1, -2))[..., rows, cols].to(frequencies.dtype)


def pair_skew_entries(frequencies: torch.Tensor) -> torch.Tensor:
    """Strictly-upper entries of skew blocks diag(w_1 J, ..., w_{b/2} J): exp(t A) rotates the block's channel
    pairs (2p, 2p + 1) by t w_p exactly as RoPE rotates a pair (init=rope)."""
    size = 2 * frequencies.shape[-1]
    pairs = torch.arange(0, size, 2)
    canonical = frequencies.new_zeros(*frequencies.shape[:-1], size, size)
    canonical[..., pairs + 1, pairs] = frequencies
    canonical[..., pairs, pairs + 1] = -frequencies
    rows, cols = torch.triu_indices(size, size, offset=1)
    return canonical[..., rows, cols]


def channels_of_pairs(pair_order: torch.Tensor, head_dim: int) -> torch.Tensor:
    """The block layout that puts RoPE pair pair_order[p] = n, the channels (n, n + d/2), at the block channels
    (2p, 2p + 1): for each block channel, the head channel it holds."""
    return torch.stack([pair_order, pair_order + head_dim // 2], dim=1).flatten()


def dense_entries(channel_of_slot: torch.Tensor, block_size: int) -> torch.Tensor:
    """For each entry (block j, row r, column c) of the block rotations, its flat index in the d x d matrix that
    rotates a head's channels, where block channel s holds head channel channel_of_slot[s]."""
    head_dim = channel_of_slot.numel()
    channels = channel_of_slot.view(-1, block_size)  # (blocks, b)
    return (channels[:, :, None] * head_dim + channels[:, None, :]).flatten()


# Taylor degree m per dtype, and the 1-norm theta every exponent is scaled under: the remainder theta^(m+1)/(m+1)!
# is below the unit roundoff (2^17/17! = 4e-10 < 2^-24 in fp32, 2^25/25! = 2e-18 < 2^-53 in fp64).
_TAYLOR_DEGREE = {torch.float32: 16, torch.float64: 24}
_SCALED_NORM = 2.0
# Squarings are a fixed count on a device or in a compiled graph, each applied where a matrix needs it: a count
# read from the norms would make the host wait for the device once per layer and forward pass, and split the
# graph. 12 covers 1-norms up to 2 * 2^12 = 8192, thousands of radians per patch step; a larger exponent comes
# out NaN, as in jax.scipy.linalg.expm, which stops training with its non-finite-loss error instead of returning
# a rotation that is not one.
MAX_SQUARINGS = 12


def _squaring_steps(squarings: torch.Tensor) -> int:
    """How many squaring steps the batch runs: the most any matrix needs where reading that count costs nothing
    (eager on the CPU: the steps beyond it are batched matmuls, forward and backward, that change nothing), else
    the fixed MAX_SQUARINGS. The values are the same either way, bit for bit."""
    if squarings.device.type == "cpu" and not torch.compiler.is_compiling():
        return int(squarings.max()) if squarings.numel() else 0
    return MAX_SQUARINGS


def matrix_exponential(matrices: torch.Tensor) -> torch.Tensor:
    """exp of a batch of square matrices (..., n, n) in fp32 or fp64: each scaled by 2^-s under the norm theta, a
    Taylor polynomial evaluated by Paterson-Stockmeyer (X^2, X^3, X^4, then Horner in X^4: 7 matmuls in fp32),
    and s squarings (at most MAX_SQUARINGS). Why not torch.linalg.matrix_exp: its backward exponentiates a
    2n x 2n block matrix per input, while autograd through these matmuls costs less than half of that, and for
    LieRE the backward of the rotations was the largest cost over RoPE; it also reads its scaling from the
    device. Its values agree within rounding; s per matrix, not one for the batch, keeps the squarings (each
    doubles the rounding error) to what each matrix needs: in fp32 at norm 100 the error is 2e-6, against 8e-6
    for torch.linalg.matrix_exp. exp(0) = I exactly, so CLS stays unrotated."""
    degree = _TAYLOR_DEGREE[matrices.dtype]
    norms = matrices.detach().abs().sum(-2).amax(-1)
    squarings = torch.log2(norms / _SCALED_NORM).ceil().clamp(min=0).nan_to_num(0)  # log2(0) = -inf
    beyond_reach = (squarings > MAX_SQUARINGS)[..., None, None]
    squarings = squarings.clamp(max=MAX_SQUARINGS)
    scaled = matrices * (0.5 ** squarings)[..., None, None]
    identity = torch.eye(matrices.shape[-1], dtype=matrices.dtype, device=matrices.device)
    square = scaled @ scaled
    powers = [identity, scaled, square, square @ scaled]
    fourth = square @ square
    coefficients = [1 / math.factorial(power) for power in range(degree + 1)]

    def group(index: int) -> torch.Tensor:  # sum_r c_(4 index + r) X^r
        return sum(coefficients[4 * index + r] * powers[r] for r in range(4) if 4 * index + r <= degree)

    result = group(degree // 4)
    for index in reversed(range(degree // 4)):
        result = group(index) + fourth @ result
    for step in range(_squaring_steps(squarings)):
        result = torch.where((squarings > step)[..., None, None], result @ result, result)
    return result.masked_fill(beyond_reach, math.nan)


def apply_block_rotations(x: torch.Tensor, rotations: torch.Tensor,
                          entries: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x (batch, heads, tokens, d) rotated per token by block-diagonal rotations (tokens, heads, blocks, b, b),
    whose entries sit at `entries` (`dense_entries`; contiguous blocks when None) of each token's d x d matrix.

    The blocks are laid out as one dense d x d matrix per (token, head), zeros off the blocks: one matmul per
    (head, token) over the whole batch runs at the CPU's matmul speed, while a batched product of b x b blocks is
    thousands of tiny matmuls, slower even at b = 8 than the dense product's extra flops. The entries are copied
    to their places in one step, so a layout over other channels than contiguous ones (init=rope) costs
    nothing more."""
    tokens, heads, blocks, size, _ = rotations.shape
    head_dim = blocks * size
    if entries is None:
        entries = dense_entries(torch.arange(head_dim, device=rotations.device), size)
    dense = rotations.new_zeros(tokens, heads, head_dim * head_dim)
    dense = dense.index_copy(-1, entries, rotations.reshape(tokens, heads, -1))
    return torch.einsum("thij,bhtj->bhti", dense.view(tokens, heads, head_dim, head_dim), x)


class BlockLieEncoding(PositionEncoding):
    """q -> R(r) q, k -> R(r) k, R(r) = blockdiag_j exp(X_j(r)) with X_j(r) skew-symmetric and linear in r.
    Subclasses give `block_rotations(coords)`. Logits are q^T R(r_q)^T R(r_k) k, which depends on r_k - r_q
    alone exactly when the generators commute."""

    def __init__(self, head_dim: int, num_heads: int, block_size: int):
        check_block_size(head_dim, block_size)
        super().__init__(head_dim, num_heads)
        self.block_size = block_size
        self.num_blocks = head_dim // block_size
        # Contiguous channels per block unless lay_out_pairs says otherwise.
        self.register_buffer("dense_entries", dense_entries(torch.arange(head_dim), block_size), persistent=False)

    def lay_out_pairs(self, pair_order: torch.Tensor) -> None:
        """Blocks over whole RoPE pairs (n, n + d/2), pair_order[p] at the block channels (2p, 2p + 1): our RoPE
        rotates the pairs (n, n + d/2) ("rotate-half"), which contiguous blocks cannot hold. The permutation is
        folded into each token's rotation matrix, so q and k keep their channel order."""
        self.dense_entries = dense_entries(channels_of_pairs(pair_order, self.head_dim).to(self.dense_entries.device),
                                           self.block_size)

    def block_rotations(self, coords: torch.Tensor) -> torch.Tensor:
        """R(r) as (tokens, heads, blocks, b, b) from coords (tokens, axes) in the parameters' dtype."""
        raise NotImplementedError

    def rotations(self, coords: torch.Tensor) -> torch.Tensor:
        """`block_rotations` in the parameters' precision even under bf16 autocast, which would run the
        exponential's chain of matmuls in bf16 and leave R about 3e-2 from orthogonal on the MNIST grid."""
        dtype = next(self.parameters()).dtype
        with autocast_off(self._device_type()):
            return self.block_rotations(coords.to(dtype))

    def rotate(self, q: torch.Tensor, k: torch.Tensor, coords: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        rotations = self.rotations(coords).to(q.dtype)
        return (apply_block_rotations(q, rotations, self.dense_entries),
                apply_block_rotations(k, rotations, self.dense_entries))
