"""Exact properties of the position encodings: relative logits, orthogonal bases, RoPE as the special case,
folding, gradients, checkpoints and refused options."""
import math
import re

import pytest
import torch
from omegaconf import OmegaConf

from rpe_bench import pos
from rpe_bench.pos.reflection import householder_basis
from rpe_bench.pos.rotary import RotaryEncoding
from tests.helpers import PROJECT
from tests.tolerances import chain_bound, fp32_angle_bound

HEADS, HEAD_DIM, TOKENS = 2, 12, 7
# From what the encodings declare and are (rpe_bench/pos/base.py), not from lists of names.
STRING_VARIANTS = [name for name in pos.available() if pos.encoding_type(name).folds]
ROTARY_VARIANTS = [name for name in pos.available() if issubclass(pos.encoding_type(name), RotaryEncoding)]
# Options the tests' head dim 12 needs: f has no default; the default block size 8 does not divide 12.
REQUIRED_OPTIONS = {"cayley_sparse": {"f": 0.5}, "liere": {"block_size": 4}, "comrope_ap": {"block_size": 6},
                    "comrope_ld": {"block_size": 4}}


def make(name, head_dim=HEAD_DIM, dtype=torch.float64, **options):
    encoding = pos.build(name, head_dim=head_dim, num_heads=HEADS, **{**REQUIRED_OPTIONS.get(name, {}), **options})
    return encoding.to(dtype)


def basis_orthogonality_bound(basis: torch.Tensor) -> float:
    """P from d x d products and solves (Cayley's LU, Householder's d reflections, the circulant's Fourier basis):
    each entry of P^T P - I carries about d^2 sequential roundings."""
    size = basis.shape[-1]
    return chain_bound(size * size, basis.dtype)


def perturbed(encoding):
    """Moves every parameter away from its init (S = 0, paired reflections...), so properties are tested on
    a generic member of the family rather than on RoPE."""
    with torch.no_grad():
        for parameter in encoding.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    return encoding


def random_qk(dtype=torch.float64, batch=2, head_dim=HEAD_DIM):
    return (torch.randn(batch, HEADS, TOKENS, head_dim, dtype=dtype),
            torch.randn(batch, HEADS, TOKENS, head_dim, dtype=dtype))


def random_coords(dtype=torch.float64):
    return torch.rand(TOKENS, 2, dtype=dtype) * 8


def logits(q, k):
    return q @ k.transpose(-1, -2)


def test_every_pos_config_names_a_registered_encoding():
    named = {OmegaConf.load(path).name for path in (PROJECT / "conf" / "pos").glob("*.yaml")}
    assert named <= set(pos.available())


def test_the_readmes_encoding_table_names_registered_encodings_only():
    """The README's table of `pos=` values, checked against the registry: every row is an encoding a user can
    choose (registered, with its conf/pos YAML). A new encoding needs no row for the suite to pass; the project's
    own are all there."""
    table = (PROJECT / "README.md").read_text().split("| `pos=` | what it is |")[1].split("\n\n")[0]
    listed = re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE)
    assert len(listed) == len(set(listed)) and set(listed) <= set(pos.available())
    assert all((PROJECT / "conf" / "pos" / f"{name}.yaml").exists() for name in listed)


@pytest.mark.parametrize("name", pos.available())
def test_shapes_and_dtype_are_kept(name):
    encoding = make(name, dtype=torch.float32)
    q, k = random_qk(torch.bfloat16, batch=3)
    encoded_q, encoded_k = encoding(q, k, random_coords(torch.float32))
    assert encoded_q.shape == encoded_k.shape == (3, HEADS, TOKENS, HEAD_DIM)
    assert encoded_q.dtype == encoded_k.dtype == torch.bfloat16


def test_angles_stay_in_fp32_under_bf16_autocast():
    # At x = 200 a bf16 angle is off by up to 0.5 rad; fp32 angles leave only bf16 rounding of q, cos, sin.
    encoding = make("rope", dtype=torch.float32, rope_base=2.0)
    q, k = random_qk(torch.float32)
    coords = torch.full((TOKENS, 2), 200.0) + torch.rand(TOKENS, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low_q, _ = encoding.rotate(q.bfloat16(), k.bfloat16(), coords)
    reference_q, _ = encoding.rotate(q, k, coords)
    torch.testing.assert_close(low_q.float(), reference_q, rtol=0, atol=0.05)


def naive_axial_rope(x, coords, base):
    """Axial RoPE from explicit 2x2 rotations, in the documented rotate-half layout: pair n is the channels
    (n, n + d/2); pairs n < d/4 follow x with theta_n, the others follow y with theta_(n - d/4)."""
    dim = x.shape[-1]
    quarter = dim // 4
    out = x.clone()
    for token in range(x.shape[2]):
        for pair in range(dim // 2):
            axis = 0 if pair < quarter else 1
            angle = float(coords[token, axis]) * base ** (-(pair % quarter) / quarter)
            rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]],
                                    dtype=x.dtype)
            channels = [pair, pair + dim // 2]
            out[:, :, token, channels] = x[:, :, token, channels] @ rotation.T
    return out


def test_rope_matches_explicit_rotation_matrices():
    encoding = make("rope", rope_base=10.0)
    q, k = random_qk()
    coords = random_coords()
    encoded_q, encoded_k = encoding(q, k, coords)
    # Not fp64's eps: the frequency table is built in fp32 whatever the module's dtype (an angle error per pair).
    angle_error = fp32_angle_bound(coords)
    torch.testing.assert_close(encoded_q, naive_axial_rope(q, coords, 10.0), rtol=0,
                               atol=2 * angle_error * q.abs().max().item())
    torch.testing.assert_close(encoded_k, naive_axial_rope(k, coords, 10.0), rtol=0,
                               atol=2 * angle_error * k.abs().max().item())


def test_rope_mixed_init_follows_rope_vit():
    """Base 10 by default, as rope-vit's mixed models (its axial models use 100)."""
    theta_x, theta_y = make("rope_mixed").frequencies()
    magnitudes = 10.0 ** (-torch.arange(HEAD_DIM // 4, dtype=torch.float64) / (HEAD_DIM // 4))
    torch.testing.assert_close(theta_x.hypot(theta_y), magnitudes.repeat(HEADS, 2))
    quarter = HEAD_DIM // 4
    first = torch.atan2(theta_y[:, :quarter], theta_x[:, :quarter])
    second = torch.atan2(theta_y[:, quarter:], theta_x[:, quarter:])
    assert torch.allclose(first, first[:, :1].expand_as(first))
    torch.testing.assert_close(torch.remainder(second - first, 2 * math.pi), torch.full_like(first, math.pi / 2))


@pytest.mark.parametrize("name", STRING_VARIANTS)
def test_string_basis_is_orthogonal(name):
    basis = perturbed(make(name, dtype=torch.float32)).basis()
    assert basis.shape == (HEADS, HEAD_DIM, HEAD_DIM)
    identity = torch.eye(HEAD_DIM).expand_as(basis)
    torch.testing.assert_close(basis.transpose(1, 2) @ basis, identity, rtol=0, atol=basis_orthogonality_bound(basis))


@pytest.mark.parametrize("name", STRING_VARIANTS)
def test_string_basis_stays_orthogonal_in_fp32_under_bf16_autocast(name):
    # Autocast would run reflection's WY product in bf16: P then drifts from orthogonal by about 7e-3.
    encoding = perturbed(make(name, head_dim=48, dtype=torch.float32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        basis = encoding.projection_basis()
    assert basis.dtype == torch.float32
    identity = torch.eye(48).expand_as(basis)
    torch.testing.assert_close(basis.transpose(1, 2) @ basis, identity, rtol=0, atol=basis_orthogonality_bound(basis))


@pytest.mark.parametrize("name", ["cayley_dense", "cayley_sparse"])
def test_cayley_basis_is_a_rotation(name):
    determinant = torch.linalg.det(perturbed(make(name)).basis())
    torch.testing.assert_close(determinant, torch.ones(HEADS, dtype=torch.float64))


def test_cayley_basis_is_the_cayley_transform_of_the_generator():
    encoding = perturbed(make("cayley_dense"))
    rows, cols = torch.triu_indices(HEAD_DIM, HEAD_DIM, offset=1)
    skew = torch.zeros(HEADS, HEAD_DIM, HEAD_DIM, dtype=torch.float64)
    skew[:, rows, cols] = encoding.skew_entries.detach()
    skew = skew - skew.transpose(1, 2)
    identity = torch.eye(HEAD_DIM, dtype=torch.float64)
    expected = (identity - skew) @ torch.linalg.inv(identity + skew)
    torch.testing.assert_close(encoding.basis(), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("count", [1, 3, 12, 20])
def test_householder_basis_is_the_product_of_reflections(count):
    vectors = torch.randn(HEADS, count, HEAD_DIM, dtype=torch.float64)
    product = torch.eye(HEAD_DIM, dtype=torch.float64).repeat(HEADS, 1, 1)
    for index in range(count):
        unit = vectors[:, index] / vectors[:, index].norm(dim=-1, keepdim=True)
        product = product @ (torch.eye(HEAD_DIM, dtype=torch.float64) - 2 * unit[:, :, None] * unit[:, None, :])
    torch.testing.assert_close(householder_basis(vectors), product, rtol=0, atol=1e-10)


def test_reflection_starts_at_identity_for_even_k_and_at_one_reflection_for_odd_k():
    identity = torch.eye(HEAD_DIM, dtype=torch.float64).expand(HEADS, -1, -1)
    torch.testing.assert_close(make("reflection").basis(), identity, rtol=0, atol=1e-12)
    odd = make("reflection", k=5).basis()
    torch.testing.assert_close(torch.linalg.det(odd), -torch.ones(HEADS, dtype=torch.float64))
    torch.testing.assert_close(odd @ odd, identity, rtol=0, atol=1e-12)


def test_cayley_at_init_is_exactly_rope():
    torch.manual_seed(0)
    q, k = random_qk(torch.float32)
    coords = random_coords(torch.float32)
    rope_q, rope_k = make("rope", dtype=torch.float32)(q, k, coords)
    cayley_q, cayley_k = make("cayley_dense", dtype=torch.float32)(q, k, coords)
    assert torch.equal(cayley_q, rope_q) and torch.equal(cayley_k, rope_k)


def test_sparse_cayley_with_every_entry_is_dense_cayley():
    dense = perturbed(make("cayley_dense", dtype=torch.float32))
    sparse = make("cayley_sparse", dtype=torch.float32, f=1.0)
    with torch.no_grad():
        sparse.skew_entries.copy_(dense.skew_entries)
    q, k = random_qk(torch.float32)
    coords = random_coords(torch.float32)
    assert torch.equal(sparse.basis(), dense.basis())
    for sparse_out, dense_out in zip(sparse(q, k, coords), dense(q, k, coords)):
        assert torch.equal(sparse_out, dense_out)


@pytest.mark.parametrize("name, options", [("cayley_dense", {}), ("cayley_sparse", {"f": 0.3})])
def test_a_checkpoint_from_before_the_rename_of_s_entries_still_loads(name, options):
    """S's free entries were the parameter `generator` until they became `skew_entries`, as in LieRE/ComRoPE."""
    trained = perturbed(make(name, **options))
    old_style = {("generator" if key == "skew_entries" else key): value for key, value in trained.state_dict().items()}
    resumed = make(name, **options)
    resumed.load_state_dict(old_style)
    assert torch.equal(resumed.skew_entries, trained.skew_entries)
    assert torch.equal(resumed.basis(), trained.basis())


@pytest.mark.parametrize("fraction, kept", [(1e-6, 1), (0.3, 20), (1.0, 66)])
def test_sparse_cayley_keeps_a_fraction_of_the_free_entries(fraction, kept):
    encoding = perturbed(make("cayley_sparse", f=fraction))
    skew = encoding.skew_matrix()
    torch.testing.assert_close(skew, -skew.transpose(1, 2), rtol=0, atol=0)
    assert encoding.skew_entries.shape == (HEADS, kept)
    assert ((skew.triu(1) != 0).sum(dim=(1, 2)) == kept).all()


def p_after_rope(encoding, q, k, coords):
    """The wrong order, P RoPE(r) q: P^T P = I cancels in every logit, leaving plain RoPE."""
    q, k = encoding.rotate(q, k, coords)
    basis = encoding.basis()
    return torch.einsum("hij,bhtj->bhti", basis, q), torch.einsum("hij,bhtj->bhti", basis, k)


def test_cayley_differs_from_rope_only_when_p_comes_first():
    cayley = perturbed(make("cayley_dense"))
    q, k = random_qk()
    coords = random_coords()
    rope_logits = logits(*make("rope")(q, k, coords))
    assert (logits(*cayley(q, k, coords)) - rope_logits).abs().max() > 0.1
    torch.testing.assert_close(logits(*p_after_rope(cayley, q, k, coords)), rope_logits, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", STRING_VARIANTS)
def test_folded_and_unfolded_forms_agree(name):
    encoding = perturbed(make(name))
    q, k = random_qk()
    coords = random_coords()
    basis = encoding.basis()
    projected_q = torch.einsum("hij,bhtj->bhti", basis, q)
    projected_k = torch.einsum("hij,bhtj->bhti", basis, k)
    unfolded = encoding(q, k, coords)
    assert torch.equal(encoding.projection_basis(), basis)
    encoding.fold_basis_()
    assert encoding.projection_basis() is None
    assert encoding.basis() is not None
    for folded_out, unfolded_out in zip(encoding(projected_q, projected_k, coords), unfolded):
        torch.testing.assert_close(folded_out, unfolded_out, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["none", "ape", "rope", "rope_mixed"])
def test_non_string_variants_have_no_basis(name):
    encoding = make(name)
    assert encoding.basis() is None and encoding.projection_basis() is None


@pytest.mark.parametrize("name", [name for name in pos.available() if list(make(name).parameters())])
def test_gradients_reach_learnable_parameters_from_init(name):
    encoding = make(name)
    q, k = random_qk()
    weights = torch.randn(2, HEADS, TOKENS, TOKENS, dtype=torch.float64)
    (logits(*encoding(q, k, random_coords())) * weights).sum().backward()
    for parameter_name, parameter in encoding.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().max() > 1e-6, parameter_name


@pytest.mark.parametrize("name", pos.available())
def test_no_weight_decay_lists_frequencies_and_generators(name):
    encoding = make(name)
    # Every parameter of an encoding is a frequency, a generator or a vector: none decays.
    assert encoding.no_weight_decay() == {parameter_name for parameter_name, _ in encoding.named_parameters()}


def test_sparse_mask_survives_a_state_dict_round_trip():
    torch.manual_seed(1)
    saved = perturbed(make("cayley_sparse", f=0.3))
    torch.manual_seed(2)
    loaded = make("cayley_sparse", f=0.3)
    assert not torch.equal(loaded.free_entries, saved.free_entries)
    loaded.load_state_dict(saved.state_dict())
    assert torch.equal(loaded.free_entries, saved.free_entries)
    q, k = random_qk()
    coords = random_coords()
    for loaded_out, saved_out in zip(loaded(q, k, coords), saved(q, k, coords)):
        assert torch.equal(loaded_out, saved_out)


def explicit_circulant(c):
    """C[j, m] = c[(j - m) mod d] per head: the circulant matrix with first column c."""
    dim = c.shape[-1]
    return c[:, (torch.arange(dim)[:, None] - torch.arange(dim)[None]) % dim]


def test_circulant_is_the_matrix_exponential_of_circulant_generators():
    encoding = perturbed(make("circulant"))
    generator_x = explicit_circulant(encoding.c_x.detach())
    generator_y = explicit_circulant(encoding.c_y.detach())
    generator_x, generator_y = generator_x - generator_x.transpose(1, 2), generator_y - generator_y.transpose(1, 2)
    q, k = random_qk()
    coords = random_coords()
    exponent = coords[:, 0, None, None, None] * generator_x + coords[:, 1, None, None, None] * generator_y
    rotations = torch.linalg.matrix_exp(exponent)  # (tokens, heads, d, d)
    expected_q = torch.einsum("thij,bhtj->bhti", rotations, q)
    expected_k = torch.einsum("thij,bhtj->bhti", rotations, k)
    # Not fp64's eps: the Fourier basis is stored in fp32 whatever the module's dtype, so each side is an fp32
    # rounding of the d-dimensional rotation away from the reference.
    bound = chain_bound(2 * HEAD_DIM, torch.float32, (q.abs() @ k.abs().transpose(-1, -2)).max().item())
    torch.testing.assert_close(logits(*encoding(q, k, coords)), logits(expected_q, expected_k), rtol=0, atol=bound)


def test_circulant_init_starts_at_rope_mixed_magnitudes():
    theta_x, theta_y = make("circulant").frequencies()
    magnitudes = 10.0 ** (-torch.arange(HEAD_DIM // 4, dtype=torch.float64) / (HEAD_DIM // 4))
    expected = torch.cat([magnitudes, magnitudes[:-1], torch.zeros(1, dtype=torch.float64)])
    torch.testing.assert_close(theta_x.hypot(theta_y), expected.expand(HEADS, -1))


@pytest.mark.parametrize("options, message", [
    ({"f": 0}, "f=0 must be in (0, 1]"), ({"f": -0.1}, "f=-0.1 must be in (0, 1]"),
    ({"f": 1.5}, "f=1.5 must be in (0, 1]"), ({}, "needs option 'f'")])
def test_sparse_fraction_outside_the_unit_interval_is_refused(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        pos.build("cayley_sparse", head_dim=HEAD_DIM, num_heads=HEADS, **options)


@pytest.mark.parametrize("k", [0, -2])
def test_reflection_needs_at_least_one_vector(k):
    with pytest.raises(ValueError, match=f"k={k} must be >= 1"):
        pos.build("reflection", head_dim=HEAD_DIM, num_heads=HEADS, k=k)


@pytest.mark.parametrize("head_dim", [7, 6])
@pytest.mark.parametrize("name", ROTARY_VARIANTS)
def test_rotary_variants_refuse_head_dims_their_pairs_cannot_split(name, head_dim):
    """The pairs are split among the axes unevenly where they must (6 channels: 2 pairs for x, 1 for y); an odd
    head dim has a channel without a pair."""
    options = REQUIRED_OPTIONS.get(name, {})
    if head_dim % 2 == 0:
        assert pos.build(name, head_dim=head_dim, num_heads=HEADS, **options).sections == [2, 1]
        return
    with pytest.raises(ValueError, match=f"head_dim={head_dim} .* must be even"):
        pos.build(name, head_dim=head_dim, num_heads=HEADS, **options)


def test_unknown_option_is_refused_with_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown option 'f' for position encoding 'rope'; allowed: rope_base"):
        pos.build("rope", head_dim=HEAD_DIM, num_heads=HEADS, f=0.5)


def test_unknown_name_is_refused_with_the_available_ones():
    with pytest.raises(ValueError, match="unknown position encoding 'alibi'; available: ape, cayley_dense"):
        pos.build("alibi", head_dim=HEAD_DIM, num_heads=HEADS)
