"""Exact properties of the encodings built from matrix exponentials (LieRE, ComRoPE-AP, ComRoPE-LD): which are
translation invariant and which not, orthogonality, CLS at the identity, their definitions, init, gradients,
checkpoints, precision under bf16 autocast and refused options."""
import math
import subprocess
import sys

import pytest
import torch

from rpe_bench import pos
from rpe_bench.config import ConfigError, validate
from rpe_bench.model import VisionTransformer, VitShape, parameter_groups
from rpe_bench.pos import lie
from rpe_bench.pos.lie import (apply_block_rotations, channels_of_pairs, dense_entries, matrix_exponential,
                              spectral_skew_entries)
from rpe_bench.pos import comrope, liere
from rpe_bench.pos.rotary import axial_frequencies
from tests.helpers import PROJECT, compose_config
from tests.tolerances import (chain_bound, determinant_bound, exponential_roundings, fp32_angle_bound,
                              orthogonality_bound, rotated_logit_bound)

HEADS, HEAD_DIM, TOKENS = 2, 32, 9
COMROPE = ["comrope_ap", "comrope_ld"]
LIE_VARIANTS = ["liere"] + COMROPE


@pytest.fixture(autouse=True)
def fixed_draws():
    """A fixed seed keeps every run on the same draws; the bounds (tests/tolerances.py) hold for any."""
    torch.manual_seed(0)


def rotations_and_exponents(encoding, coords):
    """The encoding's rotations and the exponents it passed to the matrix exponential, whose norms set how many
    squarings, and so how much rounding, the rotations carry."""
    exponents = []

    def recording(matrices):
        exponents.append(matrices.detach())
        return matrix_exponential(matrices)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(liere, "matrix_exponential", recording)
        patch.setattr(comrope, "matrix_exponential", recording)
        rotations = encoding.rotations(coords)
    (exponent,) = exponents
    return rotations, exponent


def make(name, dtype=torch.float64, seed=0, **options):
    encoding = pos.build(name, head_dim=HEAD_DIM, num_heads=HEADS, generator=torch.Generator().manual_seed(seed),
                         **options)
    return encoding.to(dtype)


def moved_off_init(encoding, scale=0.3):
    """A generic member of the family: every generator entry and axis scale moved by a random amount."""
    with torch.no_grad():
        for parameter in encoding.parameters():
            parameter.add_(scale * torch.randn_like(parameter))
    return encoding


def random_qk(dtype=torch.float64):
    return (torch.randn(2, HEADS, TOKENS, HEAD_DIM, dtype=dtype), torch.randn(2, HEADS, TOKENS, HEAD_DIM, dtype=dtype))


def random_coords(dtype=torch.float64):
    """Patch-unit positions as far out as a 2x extrapolation of the CIFAR grid; CLS at the origin."""
    coords = torch.rand(TOKENS, 2, dtype=dtype) * 16
    coords[0] = 0
    return coords


def logits(q, k):
    return q @ k.transpose(-1, -2)


def shifted_logit_error(encoding, dtype):
    """max |logits(r + t) - logits(r)| / max |logits(r)| for a random shift t of every token."""
    q, k = random_qk(dtype)
    coords = random_coords(dtype)
    reference = logits(*encoding(q, k, coords))
    shifted = logits(*encoding(q, k, coords + torch.tensor([3.25, -5.5], dtype=dtype)))
    return ((shifted - reference).abs().max() / reference.abs().max()).item()


def invariance_bound(encoding, dtype) -> float:
    """Relative logit error allowed by rounding alone: the rotations' (at the shifted, farther coordinates),
    their application to q and k (a length-d product each) and the logits' own length-d dot product."""
    coords = random_coords(dtype) + torch.tensor([3.25, -5.5], dtype=dtype)
    _, exponent = rotations_and_exponents(encoding, coords)
    return chain_bound(2 * exponential_roundings(exponent) + 3 * HEAD_DIM, dtype)


def naive_skew(entries, size):
    """Skew-symmetric matrices from strictly-upper entries, filled row by row with a loop."""
    matrix = torch.zeros(*entries.shape[:-1], size, size, dtype=entries.dtype)
    position = 0
    for row in range(size):
        for col in range(row + 1, size):
            matrix[..., row, col] = entries[..., position]
            matrix[..., col, row] = -entries[..., position]
            position += 1
    return matrix


@pytest.mark.parametrize("name, block_size", [("comrope_ap", 2), ("comrope_ap", 8), ("comrope_ap", 16),
                                              ("comrope_ld", 2), ("comrope_ld", 8), ("comrope_ld", 32)])
def test_comrope_is_translation_invariant_off_init(name, block_size):
    encoding = moved_off_init(make(name, dtype=torch.float32, block_size=block_size))
    assert shifted_logit_error(encoding, torch.float32) <= invariance_bound(encoding, torch.float32)


@pytest.mark.parametrize("block_size", [4, 8, 32])
def test_liere_is_not_translation_invariant_off_init(block_size):
    """Fails if the generators accidentally commute (one shared basis for x and y, say)."""
    encoding = moved_off_init(make("liere", block_size=block_size))
    generator_x, generator_y = encoding.generators()
    commutator = generator_x @ generator_y - generator_y @ generator_x
    assert commutator.flatten(2).norm(dim=-1).min() > 1e-2  # every block of every head
    assert shifted_logit_error(encoding, torch.float64) > 1e-2


def test_liere_starts_with_non_commuting_generators():
    generator_x, generator_y = make("liere").generators()
    commutator = generator_x @ generator_y - generator_y @ generator_x
    assert commutator.flatten(2).norm(dim=-1).min() > 1e-3


def test_liere_is_translation_invariant_when_its_generators_commute():
    """A_x and A_y in one shared random basis per block (the same generator seed), with different spectra: they
    commute, so LieRE is then a ComRoPE-like relative encoding."""
    encoding = make("liere", dtype=torch.float32)
    frequencies = torch.rand(2, HEADS, HEAD_DIM // 8, 4) * 2 - 1
    with torch.no_grad():
        for axis in range(2):
            encoding.skew_entries[axis] = spectral_skew_entries(frequencies[axis], torch.Generator().manual_seed(5))
    generator_x, generator_y = encoding.generators()
    commutator_bound = chain_bound(2 * 8, torch.float32, generator_x.abs().max().item() ** 2)
    torch.testing.assert_close(generator_x @ generator_y, generator_y @ generator_x, rtol=0, atol=commutator_bound)
    assert shifted_logit_error(encoding, torch.float32) <= invariance_bound(encoding, torch.float32)


def test_liere_with_two_by_two_blocks_is_translation_invariant():
    """Every 2 x 2 skew matrix is a multiple of J: LieRE_2 always commutes (RoPE-Mixed reparameterised)."""
    encoding = moved_off_init(make("liere", dtype=torch.float32, block_size=2))
    assert shifted_logit_error(encoding, torch.float32) <= invariance_bound(encoding, torch.float32)


@pytest.mark.parametrize("name", LIE_VARIANTS)
def test_every_rotation_is_orthogonal_and_the_origin_is_the_identity(name):
    encoding = moved_off_init(make(name, dtype=torch.float32))
    rotations, exponents = rotations_and_exponents(encoding, random_coords(torch.float32))
    assert rotations.shape == (TOKENS, HEADS, HEAD_DIM // 8, 8, 8) and rotations.dtype == torch.float32
    identity = torch.eye(8).expand_as(rotations)
    torch.testing.assert_close(rotations.transpose(-1, -2) @ rotations, identity, rtol=0,
                               atol=orthogonality_bound(exponents))
    torch.testing.assert_close(torch.linalg.det(rotations), torch.ones(rotations.shape[:3]), rtol=0,
                               atol=determinant_bound(exponents))
    assert torch.equal(rotations[0], identity[0])  # exactly: CLS is left as it is


@pytest.mark.parametrize("name", LIE_VARIANTS)
def test_cls_at_the_origin_is_left_unchanged(name):
    encoding = moved_off_init(make(name, dtype=torch.float32))
    q, k = random_qk(torch.float32)
    encoded_q, encoded_k = encoding(q, k, random_coords(torch.float32))
    assert torch.equal(encoded_q[:, :, 0], q[:, :, 0]) and torch.equal(encoded_k[:, :, 0], k[:, :, 0])


def test_liere_rotation_is_the_exponential_of_x_ax_plus_y_ay():
    encoding = moved_off_init(make("liere"))
    coords = random_coords()
    generators = naive_skew(encoding.skew_entries.detach(), 8)  # (axis, heads, blocks, 8, 8)
    x, y = coords[:, :, None, None, None, None].unbind(1)
    exponent = x * generators[0] + y * generators[1]
    torch.testing.assert_close(encoding.rotations(coords), torch.linalg.matrix_exp(exponent), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", COMROPE)
def test_comrope_rotation_is_the_exponential_of_the_scaled_block_generator(name):
    """R_j(r) = exp((c_xj x + c_yj y) B_j), with c one-hot for the axis partition."""
    encoding = moved_off_init(make(name))
    coords = random_coords()
    generators = naive_skew(encoding.skew_entries.detach(), 8)  # (heads, blocks, 8, 8)
    scale_x, scale_y = encoding.axis_scales().detach()
    if name == "comrope_ap":  # block j follows axis j mod 2 alone
        blocks = torch.arange(HEAD_DIM // 8)
        assert torch.equal(scale_x, (blocks % 2 == 0).double().expand_as(scale_x))
        assert torch.equal(scale_y, (blocks % 2 == 1).double().expand_as(scale_y))
    positions = coords[:, 0, None, None] * scale_x + coords[:, 1, None, None] * scale_y  # (tokens, heads, blocks)
    expected = torch.linalg.matrix_exp(positions[..., None, None] * generators)
    torch.testing.assert_close(encoding.rotations(coords), expected, rtol=0, atol=1e-12)


def test_blockwise_application_is_the_block_diagonal_matrix_product():
    rotations = torch.linalg.matrix_exp(naive_skew(torch.randn(TOKENS, HEADS, 4, 28, dtype=torch.float64), 8))
    x = torch.randn(3, HEADS, TOKENS, HEAD_DIM, dtype=torch.float64)
    expected = torch.empty_like(x)
    for token in range(TOKENS):
        for head in range(HEADS):
            expected[:, head, token] = x[:, head, token] @ torch.block_diag(*rotations[token, head]).T
    torch.testing.assert_close(apply_block_rotations(x, rotations), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("scale", [0.0, 0.1, 1.0, 3.0, 12.0])
def test_matrix_exponential_matches_torch_on_skew_matrices(dtype, scale):
    """From no squaring to six (1-norms up to about 100, as a 2x extrapolation times a trained generator), against
    torch.linalg.matrix_exp in fp64."""
    matrices = naive_skew(torch.randn(50, 28, dtype=dtype) * scale, 8)
    expected = torch.linalg.matrix_exp(matrices.double()).to(dtype)
    bound = chain_bound(exponential_roundings(matrices) + 1, dtype)  # + 1: the rounding of the fp64 reference
    torch.testing.assert_close(matrix_exponential(matrices), expected, rtol=0, atol=bound)
    if scale == 0:
        assert torch.equal(matrix_exponential(matrices), torch.eye(8, dtype=dtype).expand_as(matrices))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_squaring_only_as_far_as_the_largest_exponent_needs_changes_no_bit(monkeypatch, dtype):
    """Eager on the CPU the exponential stops after the squarings the largest exponent needs; the fixed count a
    device or a compiled graph runs gives the same values and gradients, bit for bit."""
    exponents = naive_skew(torch.randn(40, 28, dtype=dtype) * torch.logspace(-2, 2, 40, dtype=dtype)[:, None], 8)
    weights = torch.randn_like(exponents)

    def values_and_gradient():
        leaf = exponents.clone().requires_grad_()
        result = matrix_exponential(leaf)
        (result * weights).sum().backward()
        return result.detach(), leaf.grad

    needed = torch.log2(exponents.abs().sum(-2).amax(-1) / lie._SCALED_NORM).ceil()
    assert 0 < lie._squaring_steps(needed) < lie.MAX_SQUARINGS  # the early stop is what runs here
    early = values_and_gradient()
    monkeypatch.setattr(lie, "_squaring_steps", lambda squarings: lie.MAX_SQUARINGS)
    fixed = values_and_gradient()
    assert torch.equal(early[0], fixed[0]) and torch.equal(early[1], fixed[1])


def test_blocks_laid_over_rope_pairs_are_the_block_diagonal_product_in_those_channels():
    """Block channel s holds head channel channels_of_pairs(...)[s]: x rotated there equals x permuted into block
    order, rotated block by block, and permuted back."""
    rotations = torch.linalg.matrix_exp(naive_skew(torch.randn(TOKENS, HEADS, 4, 28, dtype=torch.float64), 8))
    x = torch.randn(3, HEADS, TOKENS, HEAD_DIM, dtype=torch.float64)
    channel_of_slot = channels_of_pairs(torch.randperm(HEAD_DIM // 2), HEAD_DIM)
    assert sorted(channel_of_slot.tolist()) == list(range(HEAD_DIM))
    in_block_order = apply_block_rotations(x[..., channel_of_slot], rotations)
    expected = torch.empty_like(x)
    expected[..., channel_of_slot] = in_block_order
    laid_out = apply_block_rotations(x, rotations, dense_entries(channel_of_slot, 8))
    # The same d products per channel (|R_ij| <= 1), summed in another order: (d - 1) eps sum |x_j| between the two.
    bound = HEAD_DIM * torch.finfo(x.dtype).eps * x.abs().sum(-1).max().item()
    torch.testing.assert_close(laid_out, expected, rtol=0, atol=bound)


def test_comrope_ap_at_block_size_two_is_axial_rope_with_interleaved_pairs():
    """At b = 2 the random block rotation commutes with J, so block j is axial RoPE's pair (j // 2) of axis
    j mod 2: the logits equal RoPE's once the channels are permuted into RoPE's rotate-half layout."""
    comrope = make("comrope_ap", block_size=2)
    rope = pos.build("rope", head_dim=HEAD_DIM, num_heads=HEADS).double()
    quarter = HEAD_DIM // 4
    # RoPE pair n < d/4 follows x at theta_n, pair d/4 + n follows y at theta_n; channels (n, n + d/2).
    pair_of_block = [(block // 2) + quarter * (block % 2) for block in range(HEAD_DIM // 2)]
    permutation = torch.empty(HEAD_DIM, dtype=torch.long)
    permutation[torch.tensor(pair_of_block)] = torch.arange(0, HEAD_DIM, 2)
    permutation[torch.tensor(pair_of_block) + HEAD_DIM // 2] = torch.arange(1, HEAD_DIM, 2)
    q, k = random_qk()
    coords = random_coords()
    expected = logits(*rope(q[..., permutation], k[..., permutation], coords))
    # Not fp64's eps: both store their frequencies in fp32, each rounded on its own, on both q's and k's side.
    bound = rotated_logit_bound(q, k, 2 * fp32_angle_bound(coords))
    torch.testing.assert_close(logits(*comrope(q, k, coords)), expected, rtol=0, atol=bound)


def test_comrope_ap_starts_with_axial_rope_frequencies_in_a_random_basis():
    encoding = make("comrope_ap", rope_base=100.0)
    generators = naive_skew(encoding.skew_entries.detach(), 8)
    frequencies = torch.linalg.eigvals(generators).imag.sort(dim=-1).values[..., 4:]  # the positive ones
    per_block = axial_frequencies(HEAD_DIM, 100.0).double().view(2, 4).repeat_interleave(2, dim=0)
    torch.testing.assert_close(frequencies, per_block.sort(dim=-1).values.expand_as(frequencies), rtol=0,
                               atol=1e-6)
    assert (generators[..., :2, 2:].abs().amax(dim=(-1, -2)) > 1e-3).all()  # not 2 x 2 blocks: a random basis


def test_comrope_ld_starts_with_rope_mixed_directions():
    scale_x, scale_y = make("comrope_ld").axis_scales()
    angles = torch.atan2(scale_y, scale_x)  # (heads, blocks)
    torch.testing.assert_close(scale_x.hypot(scale_y), torch.ones_like(scale_x))
    torch.testing.assert_close(angles[:, :2], angles[:, :1].expand(-1, 2))
    torch.testing.assert_close(torch.remainder(angles[:, 2:] - angles[:, :2], 2 * math.pi),
                               torch.full((HEADS, 2), math.pi / 2, dtype=torch.float64))


@pytest.mark.parametrize("name", LIE_VARIANTS)
def test_init_draws_come_from_the_generator_alone(name):
    state = torch.get_rng_state()
    first, second, other = make(name, seed=3), make(name, seed=3), make(name, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    for parameter_name, parameter in first.named_parameters():
        assert torch.equal(parameter, dict(second.named_parameters())[parameter_name])
        assert not torch.equal(parameter, dict(other.named_parameters())[parameter_name])


@pytest.mark.parametrize("name", LIE_VARIANTS)
def test_gradients_reach_every_generator_from_init(name):
    encoding = make(name)
    q, k = random_qk()
    weights = torch.randn(2, HEADS, TOKENS, TOKENS, dtype=torch.float64)
    (logits(*encoding(q, k, random_coords())) * weights).sum().backward()
    entries = encoding.skew_entries.grad
    assert (entries.abs().amax(dim=-1) > 1e-8).all()  # every (axis,) head and block
    if name == "comrope_ld":
        assert (encoding.scales.grad.abs() > 1e-8).all()


@pytest.mark.parametrize("name", LIE_VARIANTS)
def test_state_dict_round_trip_keeps_the_model(name):
    saved = moved_off_init(make(name, seed=1))
    loaded = make(name, seed=2)
    loaded.load_state_dict(saved.state_dict())
    q, k = random_qk()
    coords = random_coords()
    for loaded_out, saved_out in zip(loaded(q, k, coords), saved(q, k, coords)):
        assert torch.equal(loaded_out, saved_out)


@pytest.mark.parametrize("name", LIE_VARIANTS)
def test_rotations_stay_in_fp32_under_bf16_autocast(name):
    encoding = moved_off_init(make(name, dtype=torch.float32))
    coords = random_coords(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rotations = encoding.rotations(coords)
        encoded_q, _ = encoding(*(tensor.bfloat16() for tensor in random_qk(torch.float32)), coords)
    assert rotations.dtype == torch.float32 and encoded_q.dtype == torch.bfloat16
    torch.testing.assert_close(rotations, encoding.rotations(coords), rtol=0, atol=0)


@pytest.mark.parametrize("name", LIE_VARIANTS)
def test_generators_are_not_weight_decayed(name):
    shape = VitShape(image_size=16, patch_size=4, channels=3, num_classes=5, emb_dim=32, depth=2, num_heads=2)
    model = VisionTransformer(shape, name, seed=0)
    _, kept = parameter_groups(model, weight_decay=0.05)
    kept_ids = {id(parameter) for parameter in kept["params"]}
    encoding_parameters = [p for block in model.blocks for p in block.attention.position.parameters()]
    assert encoding_parameters and all(id(parameter) in kept_ids for parameter in encoding_parameters)


@pytest.mark.parametrize("name, head_dim, block_size, allowed", [
    ("liere", 32, 12, "[2, 4, 8, 16, 32]"),  # does not divide the head dim
    ("liere", 32, 1, "[2, 4, 8, 16, 32]"),  # below 2
    ("comrope_ld", 32, 0, "[2, 4, 8, 16, 32]"),
    ("comrope_ld", 24, 3, "[2, 4, 6, 8, 12, 24]"),  # odd: divides, but a 3 x 3 block never rotates one direction
    ("comrope_ap", 32, 32, "[2, 4, 8, 16]"),  # one block, two axes: each axis needs a block of its own
    ("liere", 9, 3, "none, the head dim is odd"),
    ("comrope_ap", 6, 6, "[2]"),
])
def test_bad_block_sizes_are_refused_with_the_allowed_ones(name, head_dim, block_size, allowed):
    with pytest.raises(ValueError, match=f"block_size={block_size} is not allowed") as refused:
        pos.build(name, head_dim=head_dim, num_heads=HEADS, block_size=block_size)
    assert str(refused.value).endswith(f"allowed: {allowed}") and "\n" not in str(refused.value)


@pytest.mark.parametrize("overrides, named", [
    (["pos=liere", "pos.options.block_size=5"], "block_size=5"),
    (["pos=comrope_ap", "pos.options.block_size=32"], "block_size=32"),
    (["pos=comrope_ld", "model.emb_dim=36"], "head dim is odd"),
    (["pos=liere", "pos.options.block_size=8.5"], "block_size=8.5"),
])
def test_bad_options_are_refused_at_start_up_with_one_line(overrides, named):
    with pytest.raises(ConfigError) as refused:
        validate(compose_config(*overrides))
    assert named in str(refused.value) and "\n" not in str(refused.value)


def test_command_line_refuses_a_bad_block_size_with_exit_status_2(tmp_path):
    completed = subprocess.run([sys.executable, "-m", "rpe_bench.train", "pos=liere", "pos.options.block_size=12",
                                f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, cwd=PROJECT)
    assert completed.returncode == 2
    assert "block_size=12" in completed.stderr and len(completed.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
