"""Measure what the reference notebook's position encoding computes, next to ours.

The notebook (repository EthanSha111/Final_datamining) encodes q and k on the full embedding width, before the
split into heads, with 1D RoPE over the flattened patch index (CLS at index 0), and applies its Cayley matrix
after the rotation. This script re-states that formulation in a few lines (our own code, for measurement only)
and reports, for random non-zero S:

- translation invariance: the largest change of a per-head patch-patch logit when the image content moves by
  one patch (every flattened index shifts by the same amount), relative to the largest logit;
- whether P does anything: with one head, P applied after RoPE cancels in q.k and the logits equal RoPE's;
- its "reflection" variant: two 2x2 Householder reflections per pair compose into a rotation (det +1);
- 1D positions on a 2D grid: how many patch pairs at 1D distance 1 are not 2D neighbours.

    python scripts/notebook_formulation.py --output docs/notebook_formulation.md
"""
import argparse
from pathlib import Path

import torch

from rpe_bench import pos
from rpe_bench.coordinates import patch_coordinates


def rope_1d_full_width(x: torch.Tensor, index: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """1D RoPE over the whole width D, interleaved pairs (2n, 2n+1), angle index * base^(-2n/D)."""
    width = x.shape[-1]
    angles = index[:, None].double() * base ** (-torch.arange(0, width, 2, dtype=torch.float64) / width)
    cos, sin = angles.cos(), angles.sin()
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


def cayley(skew: torch.Tensor) -> torch.Tensor:
    identity = torch.eye(skew.shape[-1], dtype=skew.dtype)
    return torch.linalg.solve(identity + skew, identity - skew)


def random_skew(width: int, scale: float, generator: torch.Generator) -> torch.Tensor:
    upper = torch.randn(width, width, dtype=torch.float64, generator=generator).triu(1) * scale
    return upper - upper.T


def notebook_logits(q, k, index, basis, heads: int) -> torch.Tensor:
    """Per-head logits (heads, tokens, tokens): full-width RoPE, then P, then the head split."""
    q = rope_1d_full_width(q, index) @ basis.T
    k = rope_1d_full_width(k, index) @ basis.T
    tokens, width = q.shape
    q = q.view(tokens, heads, width // heads).transpose(0, 1)
    k = k.view(tokens, heads, width // heads).transpose(0, 1)
    return q @ k.transpose(1, 2)


def ours_logits(q, k, coords, encoding) -> torch.Tensor:
    tokens, width = q.shape
    heads = encoding.num_heads
    q = q.view(1, tokens, heads, width // heads).transpose(1, 2)
    k = k.view(1, tokens, heads, width // heads).transpose(1, 2)
    q, k = encoding(q, k, coords)
    return (q @ k.transpose(2, 3))[0]


def shift_error(logits_at, shifted_logits_at) -> float:
    """max |logit(i + s, j + s) - logit(i, j)| over patch pairs, relative to max |logit|."""
    reference, shifted = logits_at, shifted_logits_at
    return ((shifted - reference).abs().max() / reference.abs().max()).item()


def measure(width: int, heads: int, grid: int, scale: float, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    tokens = 1 + grid * grid
    q = torch.randn(tokens, width, dtype=torch.float64, generator=generator)
    k = torch.randn(tokens, width, dtype=torch.float64, generator=generator)
    basis = cayley(random_skew(width, scale, generator))
    patches = torch.arange(1, tokens)
    index = torch.cat([torch.zeros(1), patches.double()])  # CLS at 0, patches 1 .. N in row-major order
    shift = 1  # the content moves one patch to the right: every flattened index + 1
    notebook = notebook_logits(q, k, index, basis, heads)[:, 1:, 1:]
    notebook_shifted = notebook_logits(q, k, index + torch.cat([torch.zeros(1), torch.full((tokens - 1,), shift)]),
                                       basis, heads)[:, 1:, 1:]
    single_head_p = notebook_logits(q, k, index, basis, 1)
    single_head_rope = notebook_logits(q, k, index, torch.eye(width, dtype=torch.float64), 1)

    torch.manual_seed(seed)
    encoding = pos.build("cayley_dense", head_dim=width // heads, num_heads=heads).double()
    with torch.no_grad():
        encoding.skew_entries.normal_(0, scale)
    coords = patch_coordinates(grid, grid).double()
    moved = coords.clone()
    moved[1:, 0] += 1.0
    ours = ours_logits(q, k, coords, encoding)[:, 1:, 1:]
    ours_shifted = ours_logits(q, k, moved, encoding)[:, 1:, 1:]
    rope = pos.build("rope", head_dim=width // heads, num_heads=heads).double()
    ours_rope = ours_logits(q, k, coords, rope)[:, 1:, 1:]

    alpha = torch.rand(2, generator=generator, dtype=torch.float64) * 3
    reflections = [torch.eye(2, dtype=torch.float64) - 2 * torch.outer(v, v)
                   for v in (torch.stack([a.cos(), a.sin()]) for a in alpha)]
    composed = reflections[1] @ reflections[0]
    angle = 2 * (alpha[1] - alpha[0])
    rotation = torch.stack([torch.stack([angle.cos(), -angle.sin()]), torch.stack([angle.sin(), angle.cos()])])

    one_d_neighbours = [(i, i + 1) for i in range(grid * grid - 1)]
    not_2d_neighbours = sum(1 for i, j in one_d_neighbours if (j % grid) == 0)
    return {
        "notebook_shift_error": shift_error(notebook, notebook_shifted),
        "ours_shift_error": shift_error(ours, ours_shifted),
        "notebook_single_head_p_minus_rope": (single_head_p - single_head_rope).abs().max().item(),
        "ours_p_minus_rope": ((ours - ours_rope).abs().max() / ours_rope.abs().max()).item(),
        "notebook_reflection_det": torch.linalg.det(composed).item(),
        "notebook_reflection_minus_rotation": (composed - rotation).abs().max().item(),
        "one_d_neighbours": len(one_d_neighbours), "one_d_neighbours_not_2d": not_2d_neighbours,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=None, help="markdown file to write")
    parser.add_argument("--scale", type=float, default=0.1, help="std of the random entries of S")
    args = parser.parse_args()
    rows = []
    for label, width, heads, grid in (("MNIST shape (emb 128, 4 heads, 4x4 patches)", 128, 4, 4),
                                      ("CIFAR shape (emb 192, 4 heads, 8x8 patches)", 192, 4, 8)):
        rows.append((label, measure(width, heads, grid, args.scale, seed=0)))
    lines = ["| quantity | " + " | ".join(label for label, _ in rows) + " |",
             "| --- | " + " | ".join("---:" for _ in rows) + " |"]
    names = {
        "notebook_shift_error": "notebook: relative change of per-head logits under a one-patch shift",
        "ours_shift_error": "ours (cayley_dense): the same",
        "notebook_single_head_p_minus_rope": "notebook, one head: max abs(logits with P - logits of RoPE)",
        "ours_p_minus_rope": "ours: relative max abs(logits with P - logits of RoPE) (P matters)",
        "notebook_reflection_det": "notebook reflection: det of two composed 2x2 reflections",
        "notebook_reflection_minus_rotation": "notebook reflection: max abs(H2 H1 - rotation by 2(a2 - a1))",
        "one_d_neighbours": "patch pairs at 1D distance 1",
        "one_d_neighbours_not_2d": "... of which not 2D neighbours (row wrap)",
    }
    for key, name in names.items():
        lines.append(f"| {name} | " + " | ".join(f"{values[key]:.2e}" if isinstance(values[key], float)
                                                 else str(values[key]) for _, values in rows) + " |")
    table = "\n".join(lines)
    print(table)
    if args.output:
        args.output.write_text(f"S entries ~ N(0, {args.scale}^2), float64, seed 0.\n\n{table}\n")


if __name__ == "__main__":
    main()
