"""Cayley-STRING (Schenck et al. 2025): q -> RoPE(r) P q with P = (I - S)(I + S)^-1, S skew-symmetric."""
import torch
from torch import nn

from rpe_bench.pos import register
from rpe_bench.pos.rope import AxialRope


def read_entries_under_their_old_name(module, state_dict, prefix, *arguments) -> None:
    """Checkpoints written before the parameter's rename hold S's entries as `generator`: they still resume."""
    if prefix + "generator" in state_dict:
        state_dict[prefix + "skew_entries"] = state_dict.pop(prefix + "generator")


@register("cayley_dense")
class CayleyString(AxialRope):
    """S per head from its free strictly-upper entries (`skew_entries`), initialised to 0 so that P = I and the
    encoding starts as exact axial RoPE. P is orthogonal with det +1 for any S."""

    folds = True

    def __init__(self, head_dim: int, num_heads: int, rope_base: float, axes: int = 2):
        super().__init__(head_dim, num_heads, rope_base, axes)
        rows, cols = torch.triu_indices(head_dim, head_dim, offset=1)
        # Flat positions in the d x d matrix of the entries skew_entries fills, per head.
        self.register_buffer("free_entries", (rows * head_dim + cols).repeat(num_heads, 1), persistent=False)
        self.skew_entries = nn.Parameter(torch.zeros(num_heads, rows.numel()))
        self.register_load_state_dict_pre_hook(read_entries_under_their_old_name)

    def skew_matrix(self) -> torch.Tensor:
        heads, dim = self.num_heads, self.head_dim
        upper = self.skew_entries.new_zeros(heads, dim * dim).scatter(1, self.free_entries, self.skew_entries)
        upper = upper.view(heads, dim, dim)
        return upper - upper.transpose(1, 2)

    def basis(self) -> torch.Tensor:
        skew = self.skew_matrix()
        identity = torch.eye(self.head_dim, dtype=skew.dtype, device=skew.device)
        # (I - S) and (I + S)^-1 commute, so one batched solve gives P without forming an inverse. I + S is
        # invertible for every skew S (its eigenvalues are 1 + i lambda), so the solve's error check, a host
        # sync on a GPU, is skipped.
        return torch.linalg.solve_ex(identity + skew, identity - skew, check_errors=False).result
