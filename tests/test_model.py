"""The ViT around the encodings: folding P into W_q/W_k, weight-decay groups, CLS handling, other resolutions."""
import pytest
import torch

from rpe_bench import pos
from rpe_bench.coordinates import patch_coordinates
from rpe_bench.model import VisionTransformer, VitShape, fold_basis, parameter_groups
from tests.tolerances import chain_bound

SHAPE = VitShape(image_size=16, patch_size=4, channels=3, num_classes=5, emb_dim=32, depth=2, num_heads=2)
# Options that take an encoding away from its special case (a real sparse mask, an odd number of reflections).
EXERCISED_OPTIONS = {"cayley_sparse": {"f": 0.3}, "reflection": {"k": 5}}
STRING_VARIANTS = [(name, EXERCISED_OPTIONS.get(name, {})) for name in pos.available()
                   if pos.encoding_type(name).folds]


def forward_bound(output: torch.Tensor) -> float:
    """Rounding allowed between two orders of the same forward pass: per block, the projections, the basis and
    the attention are length-emb_dim and length-tokens products, relative to the outputs' size."""
    tokens = (SHAPE.image_size // SHAPE.patch_size) ** 2 + 1
    roundings = SHAPE.depth * (4 * SHAPE.emb_dim + tokens + SHAPE.mlp_ratio * SHAPE.emb_dim)
    return chain_bound(int(roundings), output.dtype, output.abs().max().item())


def model_with_moved_parameters(name, options, absolute_table=False) -> VisionTransformer:
    """A model whose encodings are away from their initial values (at init Cayley's P is I: folding it is moot)."""
    torch.manual_seed(0)
    model = VisionTransformer(SHAPE, name, options, absolute_table=absolute_table)
    with torch.no_grad():
        for block in model.blocks:
            for parameter in block.attention.position.parameters():
                parameter.add_(0.3 * torch.randn_like(parameter))
    return model.eval()


@pytest.mark.parametrize("name,options", STRING_VARIANTS)
def test_folding_the_bases_into_the_projections_keeps_the_logits(name, options):
    model = model_with_moved_parameters(name, options)
    images = torch.randn(4, 3, 16, 16)
    unfolded = model(images)
    model.fold_position_bases_()
    assert all(block.attention.position.projection_basis() is None for block in model.blocks)
    torch.testing.assert_close(model(images), unfolded, atol=forward_bound(unfolded), rtol=0)


@pytest.mark.parametrize("name,options", STRING_VARIANTS)
def test_the_basis_changes_the_model_so_folding_is_not_trivially_exact(name, options):
    model = model_with_moved_parameters(name, options)
    images = torch.randn(4, 3, 16, 16)
    with_basis = model(images)
    for block in model.blocks:  # skip P without folding it: a different function
        block.attention.position.fold_basis_()
    assert not torch.allclose(model(images), with_basis, atol=1e-4)


def test_attention_applies_basis_then_rotation_like_the_reference_forward():
    """The fused path (P folded into W, rotation on all tokens with CLS at the origin) equals the encoding's own
    unfolded forward applied to q and k from the plain projection."""
    model = model_with_moved_parameters("cayley_dense", {})
    attention = model.blocks[0].attention
    x = torch.randn(2, 17, 32)
    coords = patch_coordinates(4, 4)
    q, k, v = attention.qkv(x).view(2, 17, 3, 2, 16).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attention.position(q, k, coords)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    expected = attention.proj(expected.transpose(1, 2).reshape(2, 17, 32))
    torch.testing.assert_close(attention(x, coords), expected, atol=forward_bound(expected), rtol=0)


def test_cls_token_sits_at_the_origin_and_patches_on_the_grid():
    coords = patch_coordinates(2, 3)
    assert coords.tolist() == [[0, 0], [0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [2, 1]]
    rope = pos.build("rope", head_dim=8, num_heads=1)
    q = torch.randn(1, 1, 7, 8)
    rotated, _ = rope(q, q, coords)
    torch.testing.assert_close(rotated[:, :, 0], q[:, :, 0])  # CLS unrotated


@pytest.mark.parametrize("name", ["rope_mixed", "cayley_dense", "reflection", "circulant"])
def test_encoding_parameters_norms_biases_and_tokens_are_not_decayed(name):
    model = VisionTransformer(SHAPE, name, absolute_table=True)
    decayed, kept = parameter_groups(model, weight_decay=0.05)
    kept_ids = {id(parameter) for parameter in kept["params"]}
    decayed_ids = {id(parameter) for parameter in decayed["params"]}
    encoding_parameters = [p for block in model.blocks for p in block.attention.position.parameters()]
    assert encoding_parameters and all(id(p) in kept_ids for p in encoding_parameters)
    for parameter in (model.cls_token, model.absolute_table, model.norm.weight, model.head.bias):
        assert id(parameter) in kept_ids
    assert id(model.blocks[0].attention.qkv.weight) in decayed_ids and decayed["weight_decay"] == 0.05
    assert kept["weight_decay"] == 0.0
    assert len(kept_ids) + len(decayed_ids) == len(list(model.parameters()))


@pytest.mark.parametrize("name", pos.available())
def test_every_encoding_runs_at_a_larger_resolution(name):
    model = model_with_moved_parameters(name, {"f": 0.5} if name == "cayley_sparse" else {},
                                        absolute_table=name == "ape")
    assert model(torch.randn(2, 3, 24, 24)).shape == (2, 5)


def test_ape_table_is_interpolated_bicubically_and_unchanged_at_the_training_grid():
    model = model_with_moved_parameters("ape", {}, absolute_table=True)
    assert model.absolute_positions(4, 4) is model.absolute_table
    larger = model.absolute_positions(6, 6)
    assert larger.shape == (1, 36, 32)
    grid = model.absolute_table.reshape(4, 4, 32)
    # Bicubic interpolation keeps the table's range roughly and its mean closely.
    torch.testing.assert_close(larger.mean(), grid.mean(), atol=0.02, rtol=0)


def test_folding_runs_in_the_weights_precision_under_bf16_autocast():
    """Folded under bf16 autocast, W_q' would carry P at bf16 precision (about 5e-3 from orthogonal); the fold
    must equal the fp32 one exactly and be cast to bf16 only by the projection that uses it."""
    generator = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(3 * 16, 16, generator=generator), torch.randn(3 * 16, generator=generator)
    basis = torch.linalg.qr(torch.randn(2, 8, 8, generator=generator)).Q
    expected_weight, expected_bias = fold_basis(weight, bias, basis)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        folded_weight, folded_bias = fold_basis(weight, bias, basis)
    assert folded_weight.dtype == torch.float32 and folded_bias.dtype == torch.float32
    assert torch.equal(folded_weight, expected_weight) and torch.equal(folded_bias, expected_bias)
