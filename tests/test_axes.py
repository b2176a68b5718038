"""Positions with any number of axes: each encoding declares the numbers of axes it takes (`supported_axes`),
is exact for every one of them, refuses the others with one line, and 2D runs stay what they were."""
import inspect
import json

import pytest
import torch

from rpe_bench import pos
from rpe_bench.config import ConfigError, Coordinates, validate
from rpe_bench.coordinates import flat_coordinates
from rpe_bench.model import VisionTransformer, VitShape
from rpe_bench.pos.rotary import axial_frequencies, axial_sections, random_frames, rotary_angles
from tests.golden_runs import GOLDEN_FILE, METRICS, encodings, tiny_run
from tests.helpers import TINY_RUN, compose_config, read_results, run_training
from tests.test_contract import HEAD_DIM, check_cls_unchanged, check_norms_kept, check_relative, make

AXES = (1, 2, 3)


@pytest.mark.parametrize("axes", AXES)
@pytest.mark.parametrize("name", pos.available())
def test_every_encoding_is_exact_for_the_axes_it_declares_and_refuses_the_others(name, axes):
    if not pos.takes_axes(name, axes):
        with pytest.raises(ValueError) as refused:
            make(name, axes=axes)
        (line,) = str(refused.value).splitlines()
        assert "takes positions with" in line and f"not {axes}" in line and "rope" in line
        return
    # A 16-channel head holds two blocks of 8: blocks of 4 give every one of three axes a block of its own.
    takes_blocks = "block_size" in inspect.signature(pos.encoding_type(name)).parameters
    encoding = make(name, axes=axes, **({"block_size": 4} if takes_blocks and axes > 2 else {}))
    check_norms_kept(encoding, axes)
    check_cls_unchanged(encoding, axes)
    if encoding.relative or axes == 1:  # one generator always commutes with itself
        check_relative(encoding, axes)
    else:  # LieRE's generators do not commute: relativity must fail, or the check could not tell
        with pytest.raises(AssertionError, match="logits change when every coordinate shifts"):
            check_relative(encoding, axes)


def test_pairs_are_split_among_the_axes_as_evenly_as_they_go():
    assert axial_sections(32, 1) == [16] and axial_sections(32, 2) == [8, 8] and axial_sections(32, 3) == [6, 5, 5]
    with pytest.raises(ValueError, match="head_dim=4 is not allowed for axial RoPE over 3 axes"):
        axial_sections(4, 3)
    rope = make("rope", axes=3, moved=False)
    active = [(theta != 0).squeeze(0) for theta in rope.frequencies()]
    assert [int(mask.sum()) for mask in active] == axial_sections(HEAD_DIM, 3) == [3, 3, 2]
    assert not (active[0] & active[1]).any() and not (active[1] & active[2]).any()


def test_axial_rope_over_two_axes_is_the_former_layout_bit_for_bit():
    """Half of the pairs follow x, half follow y, at RoPE-ViT's axial frequencies, as before axes were general."""
    rope = make("rope", moved=False).float()
    theta = axial_frequencies(HEAD_DIM, 100.0)
    zeros = torch.zeros_like(theta)
    theta_x, theta_y = torch.cat([theta, zeros])[None], torch.cat([zeros, theta])[None]
    coords = torch.rand(20, 2) * 30
    former = coords[:, 0, None] * theta_x[:, None, :] + coords[:, 1, None] * theta_y[:, None, :]
    assert torch.equal(rotary_angles(coords, rope.frequencies()), former)


def test_flat_coordinates_are_the_row_major_patch_index_with_cls_at_zero():
    coords = flat_coordinates(3, 4)
    assert coords.shape == (13, 1)
    assert torch.equal(coords[:, 0], torch.tensor([0.0, *range(12)]))


def test_ape_over_the_flat_index_is_its_table_interpolated_along_the_index():
    torch.manual_seed(0)
    shape = VitShape(image_size=8, patch_size=2, channels=1, num_classes=3, emb_dim=16, depth=1, num_heads=2)
    vit = VisionTransformer(shape, "ape", absolute_table=True, coordinates=Coordinates.flat)
    assert vit.absolute_positions(4, 4) is vit.absolute_table
    grown = vit.absolute_positions(8, 8)
    assert grown.shape == (1, 64, 16)
    # Linear over the index, half-pixel centres: at 4x the entries, the table's first entry leads unchanged.
    torch.testing.assert_close(grown[0, 0], vit.absolute_table[0, 0])
    assert vit(torch.randn(2, 1, 16, 16)).shape == (2, 3)


def test_a_flat_run_trains_and_records_its_coordinates(monkeypatch, tmp_path):
    run_training(monkeypatch, f"hydra.run.dir={tmp_path}", "pos=cayley_dense", "pos.coordinates=flat")
    results = read_results(tmp_path)
    assert results["status"] == "completed" and results["config"]["coordinates"] == "flat"


@pytest.mark.parametrize("overrides, message", [
    (["pos=rope", "pos.coordinates=flat", "pos.coordinate_augmentation.shift=0.1"],
     "pos.coordinate_augmentation.shift needs (x, y) coordinates, and pos.coordinates=flat on dataset=digits "
     "gives 1 axis: allowed on images with pos.coordinates=grid or normalized"),
    (["dataset=moving_mnist", "pos=rope", "pos.coordinate_augmentation.jitter=1.2"],
     "pos.coordinate_augmentation.jitter needs (x, y) coordinates, and pos.coordinates=grid on "
     "dataset=moving_mnist gives 3 axes: allowed on images with pos.coordinates=grid or normalized")])
def test_flat_coordinates_are_refused_where_they_cannot_apply(overrides, message):
    with pytest.raises(ConfigError) as refused:
        validate(compose_config(*TINY_RUN, *overrides))
    assert str(refused.value) == message


@pytest.mark.parametrize("name", encodings())
def test_two_axis_runs_reproduce_the_numbers_recorded_before_axes_were_general(name, tmp_path):
    """tests/golden/two_axes.json was recorded by the commit just before this work (its `made_by`). On that
    machine the numbers agreed bit for bit; across CPUs (SIMD width, FMA) they differ by roundings that two
    epochs of training amplify: the bound leaves a thousand times the 1e-7 relative drift seen between an
    Intel and an AMD CPU."""
    recorded = json.loads(GOLDEN_FILE.read_text())["runs"][name]["history"]
    history = tiny_run(name, tmp_path / name)["history"]
    tolerance = 2 ** 10 * torch.finfo(torch.float32).eps
    for now, before in zip(history, recorded, strict=True):
        for metric in METRICS:
            assert now[metric] == pytest.approx(before[metric], rel=tolerance, abs=tolerance), (name, metric)


def test_comrope_ap_gives_block_j_to_axis_j_mod_d_and_allows_an_uneven_split():
    encoding = make("comrope_ap", axes=3, block_size=4, moved=False)  # 16 channels: 4 blocks over (t, x, y)
    assert encoding.axis_scales().squeeze(1).sum(dim=1).tolist() == [2.0, 1.0, 1.0]
    assert encoding.axis_scales().squeeze(1).argmax(dim=0).tolist() == [0, 1, 2, 0]


@pytest.mark.parametrize("axes", AXES)
def test_random_frames_are_orthonormal_and_rope_vits_angle_in_2d(axes):
    frames = random_frames(5, axes, torch.Generator().manual_seed(0)).double()
    identity = torch.eye(axes, dtype=torch.float64).expand(5, -1, -1)
    torch.testing.assert_close(frames @ frames.transpose(-1, -2), identity, rtol=0,
                               atol=4 * axes * torch.finfo(torch.float32).eps)
    if axes == 2:  # rows at a and a + pi/2
        torch.testing.assert_close(frames[:, 1], torch.stack([-frames[:, 0, 1], frames[:, 0, 0]], dim=-1),
                                   rtol=0, atol=4 * torch.finfo(torch.float32).eps)
