"""The contract every registered position encoding is checked against, from what its class declares
(`relative`, `starts_as_rope`, `folds`; rpe_bench/pos/base.py): a new encoding joins this suite by registering,
with no list to edit. Relativity is checked on the logits, for shifted coordinates and for a permuted token
order with the coordinates permuted alongside, so an encoding that reads the token order instead of the
coordinates fails it (the mutation tests below prove that it would)."""
import inspect

import pytest
import torch

from rpe_bench import pos
from rpe_bench.model import VisionTransformer, VitShape
from rpe_bench.pos.rope import AxialRope
from rpe_bench.pos.rotary import apply_rotation
from tests.helpers import CONF_DIR, compose_config
from tests.tolerances import chain_bound

HEADS, HEAD_DIM, TOKENS = 2, 16, 10
SHAPE = VitShape(image_size=8, patch_size=2, channels=1, num_classes=3, emb_dim=32, depth=1, num_heads=2)


def configured_options(name: str) -> dict:
    """The options conf/pos/<name>.yaml gives (with the sparsity it reads); none for an encoding without one."""
    if not (CONF_DIR / "pos" / f"{name}.yaml").exists():
        return {}
    return dict(compose_config(f"pos={name}").pos.options)


def make(name: str, seed: int = 0, moved: bool = True, axes: int = 2, **options) -> pos.PositionEncoding:
    """The encoding in fp64 for positions with `axes` axes, with its configured options unless `options` says
    otherwise, its parameters moved off their initial values unless `moved` is False (at init STRING's P is I,
    and a wrong P would pass)."""
    encoding = pos.build(name, head_dim=HEAD_DIM, num_heads=HEADS, generator=torch.Generator().manual_seed(seed),
                         axes=axes, **{**configured_options(name), **options}).double()
    if moved:
        torch.manual_seed(seed)
        with torch.no_grad():
            for parameter in encoding.parameters():
                parameter.add_(0.3 * torch.randn_like(parameter))
    return encoding


# A shift of every coordinate, one entry per axis: (x, y), (index) or (t, x, y).
SHIFT = (3.25, -5.5, 1.75)


def inputs(seed: int = 0, axes: int = 2):
    generator = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(2, HEADS, TOKENS, HEAD_DIM, dtype=torch.float64, generator=generator) for _ in range(2))
    coords = torch.rand(TOKENS, axes, dtype=torch.float64, generator=generator) * 8
    coords[0] = 0  # CLS at the origin
    return q, k, coords


def logits(encoding, q, k, coords) -> torch.Tensor:
    encoded_q, encoded_k = encoding(q, k, coords)
    return encoded_q @ encoded_k.transpose(-1, -2)


def rounding_bound(q, k) -> float:
    """Frequency tables and bases stored in fp32 whatever the module's dtype: a chain of 2 d fp32 roundings on
    logits of this size."""
    return chain_bound(2 * HEAD_DIM, torch.float32, (q.abs() @ k.abs().transpose(-1, -2)).max().item())


# ---- the checks, one per declared property -------------------------------------------------------------------

def check_relative(encoding, axes: int = 2) -> None:
    """q_i . k_j depends on r_i - r_j alone: unchanged by a shift of every coordinate, and permuted along with
    the tokens when the tokens and their coordinates are permuted together."""
    q, k, coords = inputs(axes=axes)
    reference = logits(encoding, q, k, coords)
    bound = rounding_bound(q, k)
    shifted = logits(encoding, q, k, coords + torch.tensor(SHIFT[:axes], dtype=coords.dtype))
    assert (shifted - reference).abs().max().item() <= bound, "logits change when every coordinate shifts"
    order = torch.randperm(TOKENS, generator=torch.Generator().manual_seed(1))
    permuted = logits(encoding, q[:, :, order], k[:, :, order], coords[order] + 1.5)
    expected = reference[:, :, order][:, :, :, order]
    assert (permuted - expected).abs().max().item() <= bound, "logits follow the token order, not the coordinates"


def check_norms_kept(encoding, axes: int = 2) -> None:
    """Every rotation and every P is orthogonal: each token's q and k keep their norms."""
    q, k, coords = inputs(axes=axes)
    encoded_q, encoded_k = encoding(q, k, coords)
    bound = chain_bound(2 * HEAD_DIM, torch.float32, q.norm(dim=-1).max().item())
    assert (encoded_q.norm(dim=-1) - q.norm(dim=-1)).abs().max().item() <= bound
    assert (encoded_k.norm(dim=-1) - k.norm(dim=-1)).abs().max().item() <= bound


def check_cls_unchanged(encoding, axes: int = 2) -> None:
    """CLS sits at the origin, where the rotation is the identity (a STRING basis P still applies to it)."""
    q, k, coords = inputs(axes=axes)
    encoded_q, encoded_k = encoding.rotate(q, k, coords)
    bound = chain_bound(2 * HEAD_DIM, torch.float32, q.abs().max().item())
    assert (encoded_q[:, :, 0] - q[:, :, 0]).abs().max().item() <= bound
    assert (encoded_k[:, :, 0] - k[:, :, 0]).abs().max().item() <= bound


def rope_base_of(name: str) -> float:
    """The encoding's RoPE base: its configured option, else its constructor's default."""
    default = inspect.signature(pos.encoding_type(name)).parameters["rope_base"].default
    return configured_options(name).get("rope_base", default)


def check_starts_as_rope(name: str) -> None:
    """At init the logits are RoPE's with the same base."""
    encoding = make(name, moved=False)
    rope = pos.build("rope", head_dim=HEAD_DIM, num_heads=HEADS, rope_base=rope_base_of(name)).double()
    q, k, coords = inputs()
    assert (logits(encoding, q, k, coords) - logits(rope, q, k, coords)).abs().max().item() <= rounding_bound(q, k)


def check_fold(name: str) -> None:
    """Folding P into W_q and W_k keeps the model's outputs; only encodings that declare a basis have one."""
    torch.manual_seed(0)
    model = VisionTransformer(SHAPE, name, configured_options(name)).double().eval()
    with torch.no_grad():
        for parameter in model.blocks[0].attention.position.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    has_basis = model.blocks[0].attention.position.basis() is not None
    assert has_basis == type(model.blocks[0].attention.position).folds
    images = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    unfolded = model(images)
    model.fold_position_bases_()
    torch.testing.assert_close(model(images), unfolded, rtol=0,
                               atol=chain_bound(4 * SHAPE.emb_dim, torch.float64, unfolded.abs().max().item()))


def check_trains_and_reloads(name: str) -> None:
    """One AdamW step moves every learnable parameter of the encoding; its state_dict loads into an encoding
    built from another seed and gives the same logits."""
    torch.manual_seed(0)
    model = VisionTransformer(SHAPE, name, configured_options(name))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 1, 8, 8)), torch.tensor([0, 1, 2, 0]))
    assert torch.isfinite(loss)
    encoding = model.blocks[0].attention.position
    before = [parameter.detach().clone() for parameter in encoding.parameters()]
    loss.backward()
    optimizer.step()
    assert all(not torch.equal(old, new) for old, new in zip(before, encoding.parameters()))
    saved = make(name, seed=1)
    loaded = make(name, seed=2, moved=False)
    loaded.load_state_dict(saved.state_dict())
    q, k, coords = inputs()
    assert torch.equal(logits(saved, q, k, coords), logits(loaded, q, k, coords))


def check_contract(name: str) -> None:
    encoding_type = pos.encoding_type(name)
    encoding = make(name)
    if encoding_type.relative:
        check_relative(encoding)
    else:
        with pytest.raises(AssertionError):
            check_relative(encoding)
    check_norms_kept(encoding)
    check_cls_unchanged(encoding)
    if encoding_type.starts_as_rope:
        check_starts_as_rope(name)
    check_fold(name)
    check_trains_and_reloads(name)
    with pytest.raises(ValueError, match="unknown option"):
        pos.build(name, head_dim=HEAD_DIM, num_heads=HEADS, no_such_option=1, **configured_options(name))


@pytest.mark.parametrize("name", pos.available())
def test_every_registered_encoding_keeps_its_declared_contract(name):
    check_contract(name)


# ---- the suite can fail: encodings that break what they declare ----------------------------------------------

class RopeWithoutYaml(AxialRope):
    """An encoding without a conf/pos YAML: its constructor holds its option's default."""

    def __init__(self, head_dim: int, num_heads: int, rope_base: float = 100.0):
        super().__init__(head_dim, num_heads, rope_base)


class AngleFromSquaredX(RopeWithoutYaml):
    """Broken: the angle grows with x squared, yet it declares itself relative."""

    def rotate(self, q, k, coords):
        squared = torch.stack([coords[:, 0] ** 2, coords[:, 1]], dim=1)
        return super().rotate(q, k, squared)


class AngleFromTokenIndex(RopeWithoutYaml):
    """Broken: the angle follows the token's index squared and ignores the coordinates, so shifting them proves
    nothing; declares itself relative."""

    def rotate(self, q, k, coords):
        index = torch.arange(coords.shape[0], dtype=coords.dtype)
        return apply_rotation(q, k, ((index ** 2)[:, None] * self.theta[0].squeeze(0))[None])


@pytest.mark.parametrize("broken, caught_by", [
    (AngleFromSquaredX, "logits change when every coordinate shifts"),
    (AngleFromTokenIndex, "logits follow the token order, not the coordinates")])
def test_the_contract_fails_an_encoding_that_is_not_relative_but_says_it_is(broken, caught_by, monkeypatch):
    assert broken.relative
    monkeypatch.setitem(pos._ENCODINGS, "broken", broken)
    with pytest.raises(AssertionError, match=caught_by):
        check_relative(make("broken"))


def test_an_encoding_added_at_run_time_joins_the_contract_with_nothing_else(monkeypatch):
    """A new module's class is all it takes: registered, it is built, trained and checked like the others."""

    class ShiftedBaseRope(AxialRope):
        """RoPE at base 1000: relative, and exactly RoPE (of its own base) from the start."""

        def __init__(self, head_dim: int, num_heads: int, rope_base: float = 1000.0):
            super().__init__(head_dim, num_heads, rope_base)

    monkeypatch.setitem(pos._ENCODINGS, "throwaway_rope", ShiftedBaseRope)
    assert "throwaway_rope" in pos.available()
    check_contract("throwaway_rope")
