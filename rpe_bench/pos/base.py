"""The interface every position encoding implements (see docs/design.md), with identity defaults."""
import itertools
from typing import Callable, Dict, Optional, Set, Tuple

import torch
from torch import nn

from rpe_bench.numerics import autocast_off


class PositionEncoding(nn.Module):
    """Encodes q and k, shaped (batch, heads, tokens, head_dim), from token coordinates (tokens, axes): (x, y),
    the flat patch index, or (t, x, y).

    STRING variants have an orthogonal basis P per head, applied before the rotation. The attention folds P
    into its q/k projection (`projection_basis`), so per token only `rotate` runs, at RoPE's cost; `forward`
    is the unfolded reference form of the same function.

    What an encoding is, declared on its class and checked for every registered encoding by tests/test_contract.py:
    `relative`: q_i . k_j depends only on r_i - r_j (LieRE's non-commuting generators are the exception);
    `starts_as_rope`: at init, with its default options, its logits are axial RoPE's of its own base;
    `folds`: it has a basis P (`basis()`), folded into the q/k projection;
    `supported_axes`: the numbers of position axes it takes (2: (x, y); 1: the flat patch index; 3: (t, x, y)),
    None for any. An encoding that takes other than 2 declares `axes: int` in its constructor, which `build`
    fills in."""

    relative: bool = True
    starts_as_rope: bool = False
    folds: bool = False
    supported_axes: Optional[Tuple[int, ...]] = (2,)

    def __init__(self, head_dim: int, num_heads: int):
        super().__init__()
        self.head_dim = head_dim
        self.num_heads = num_heads
        self.basis_folded = False
        self._exact_buffers: Dict[str, Callable[[torch.dtype], torch.Tensor]] = {}

    def register_exact_buffer(self, name: str, build: Callable[[torch.dtype], torch.Tensor]) -> None:
        """A constant of the config (frequencies, a fixed basis) that follows the module's dtype by being built
        again in it, build(dtype), rather than cast: a module moved to float64 gets float64 values, not float32
        ones widened. Kept out of the state_dict."""
        self._exact_buffers[name] = build
        self.register_buffer(name, build(torch.get_default_dtype()), persistent=False)

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        for name, build in self._exact_buffers.items():
            moved = getattr(self, name)
            setattr(self, name, build(moved.dtype).to(moved.device))
        return result

    def forward(self, q: torch.Tensor, k: torch.Tensor, coords: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        basis = self.projection_basis()
        if basis is not None:
            basis = basis.to(q.dtype)
            q = torch.einsum("hij,bhtj->bhti", basis, q)
            k = torch.einsum("hij,bhtj->bhti", basis, k)
        return self.rotate(q, k, coords)

    def rotate(self, q: torch.Tensor, k: torch.Tensor, coords: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return q, k

    def basis(self) -> Optional[torch.Tensor]:
        """P, (heads, head_dim, head_dim), for STRING variants; None for the others."""
        return None

    def projection_basis(self) -> Optional[torch.Tensor]:
        """What the attention must fold into W_q / W_k on this forward pass.

        P is built in fp32 even under bf16 autocast: a bf16 matmul inside `basis` (reflection's WY product)
        leaves P about 7e-3 from orthogonal at head_dim 48. Only its product with the projection runs in
        low precision."""
        if self.basis_folded:
            return None
        with autocast_off(self._device_type()):
            return self.basis()

    def _device_type(self) -> str:
        tensor = next(itertools.chain(self.parameters(), self.buffers()), None)
        return "cpu" if tensor is None else tensor.device.type

    def fold_basis_(self) -> None:
        """Record that the model has baked P into its projection weights, so P must not be applied again."""
        self.basis_folded = True

    def no_weight_decay(self) -> Set[str]:
        """Every parameter of an encoding is a frequency or a generator: decay would pull frequencies to 0
        and P towards I, a prior none of the papers uses."""
        return {name for name, _ in self.named_parameters()}
