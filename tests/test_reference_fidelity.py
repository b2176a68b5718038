"""Our encodings against numbers computed from their reference code (tests/golden/reference_logits.json, made by
scripts/reference_logits.py from rope-vit, LieRE and ComRoPE at the commits it names), after the mapping in
docs/design.md, "Against the reference code": the same parameters copied across, the reference's positions fed
as our coordinates with (row, column) read as (y, x), and channels permuted where the layouts differ. In float64
the logits agree to 1e-10."""
import json
from pathlib import Path

import pytest
import torch

from rpe_bench import pos

GOLDEN = json.loads((Path(__file__).parent / "golden" / "reference_logits.json").read_text())
HEAD_DIM, HEADS = GOLDEN["head_dim"], GOLDEN["heads"]
TOLERANCE = 1e-10


def tensor(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def upper_entries(matrices: torch.Tensor) -> torch.Tensor:
    rows, cols = torch.triu_indices(matrices.shape[-1], matrices.shape[-1], offset=1)
    return matrices[..., rows, cols]


def ours_from_theirs(coords_row_column: torch.Tensor) -> torch.Tensor:
    """Their positions are (row, column); ours (x, y) = (column, row)."""
    return coords_row_column.flip(-1)


def our_logits(encoding, q: torch.Tensor, k: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    rotated_q, rotated_k = encoding.rotate(q[None], k[None], coords)
    return (rotated_q @ rotated_k.transpose(-1, -2))[0]


def build(name: str, **options):
    encoding = pos.build(name, head_dim=HEAD_DIM, num_heads=HEADS, **{**pos.configured_defaults(name), **options})
    return encoding.double()


def check(ours: torch.Tensor, case: dict) -> None:
    theirs = tensor(case["logits"])
    assert theirs.abs().max() > 1.0  # not a comparison of zeros
    torch.testing.assert_close(ours, theirs, rtol=0, atol=TOLERANCE)


def test_rope_mixed_matches_rope_vit():
    """rope-vit rotates the pairs (2n, 2n + 1) as complex numbers, we rotate (n, n + d/2): the channels are
    permuted alike for q and k, which leaves the logits as they are. CLS is left out (neither rotates it)."""
    case = GOLDEN["cases"]["rope_mixed"]
    encoding = build("rope_mixed")
    freqs = tensor(case["freqs"])  # (2, heads, d/2): frequencies along x and along y
    with torch.no_grad():
        encoding.theta_x.copy_(freqs[0])
        encoding.theta_y.copy_(freqs[1])
    ours_of_theirs = torch.cat([torch.arange(0, HEAD_DIM, 2), torch.arange(1, HEAD_DIM, 2)])
    q, k = (tensor(case[name])[..., ours_of_theirs] for name in ("q", "k"))
    coords = torch.stack([tensor(case["t_x"]), tensor(case["t_y"])], dim=1)  # rope-vit's own (x, y)
    check(our_logits(encoding, q, k, coords), case)


def test_liere_matches_stanford_liere():
    """Their generator is triu(raw, 1) - triu(raw, 1)^T per (axis, head x block), axis 0 the row; positions in
    [0, 1] of the image (linspace), CLS the identity, as ours at the origin."""
    case = GOLDEN["cases"]["liere"]
    encoding = build("liere", block_size=case["block_size"])
    raw = tensor(case["generator_raw_params"])[:, 0]  # (axis: row, column; heads x blocks, b, b)
    blocks = HEAD_DIM // case["block_size"]
    entries = upper_entries(raw).view(2, HEADS, blocks, -1)
    with torch.no_grad():
        encoding.skew_entries.copy_(torch.stack([entries[1], entries[0]]))  # ours: x (their column), y (row)
    coords = torch.cat([torch.zeros(1, 2, dtype=torch.float64), ours_from_theirs(tensor(case["positions"]))])
    q, k = tensor(case["q"]), tensor(case["k"])
    check(our_logits(encoding, q, k, coords), case)


def test_comrope_ap_matches_comrope():
    """Their block j follows axis j mod 2 with axis 0 the row, ours with axis 0 = x: our block 0 is their block 1,
    so the blocks' channels are swapped alike for q and k. B_j = F_j - F_j^T; CLS at their (0.5, 0.5), rotated."""
    case = GOLDEN["cases"]["comrope_ap"]
    encoding = build("comrope_ap", block_size=case["block_size"])
    size = case["block_size"]
    generators = tensor(case["freqs"])[:, 0]  # (heads, blocks, b, b)
    entries = upper_entries(generators - generators.transpose(-1, -2))
    with torch.no_grad():
        encoding.skew_entries.copy_(entries.flip(1))
    swapped = torch.cat([torch.arange(size, 2 * size), torch.arange(size)])
    q, k = (tensor(case[name])[..., swapped] for name in ("q", "k"))
    coords = ours_from_theirs(tensor(case["positions"]))
    check(our_logits(encoding, q, k, coords), case)


def test_comrope_ld_matches_comrope():
    """Every block follows both axes: c_(x, j) is their multiplier of the column axis, c_(y, j) of the row."""
    case = GOLDEN["cases"]["comrope_ld"]
    encoding = build("comrope_ld", block_size=case["block_size"])
    generators = tensor(case["freqs"])[:, 0]
    multiplier = tensor(case["multiplier"])[0, :, :, 0, 0]  # (axis: row, column; blocks)
    with torch.no_grad():
        encoding.skew_entries.copy_(upper_entries(generators - generators.transpose(-1, -2)))
        encoding.scales.copy_(torch.stack([multiplier[1], multiplier[0]])[:, None].expand(-1, HEADS, -1))
    coords = ours_from_theirs(tensor(case["positions"]))
    check(our_logits(encoding, tensor(case["q"]), tensor(case["k"]), coords), case)


@pytest.mark.parametrize("name", sorted(GOLDEN["cases"]))
def test_the_golden_numbers_name_their_source(name):
    reference = GOLDEN["cases"][name]["reference"]
    assert reference["repository"] in {"naver-ai/rope-vit", "StanfordMIMI/LieRE", "Longin-Yu/ComRoPE"}
    assert len(reference["commit"]) == 40
