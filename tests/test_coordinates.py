"""The coordinate convention (`pos.coordinates`: grid or normalized) and DINOv3's coordinate augmentation: equal
at the training resolution, interpolation inside the trained span at a larger one, CLS at the identity for every
encoding, augmentation in training mode only and from its own generator, and a run that extrapolates."""
import pytest
import torch

from rpe_bench import pos
from rpe_bench.config import ClsPosition, ConfigError, Coordinates, position_axes, validate
from rpe_bench.coordinates import CoordinateAugmentation, patch_coordinates
from rpe_bench.model import VisionTransformer, VitShape, build_model
from tests.helpers import compose_config, read_results, run_training

SHAPE = VitShape(image_size=16, patch_size=4, channels=3, num_classes=5, emb_dim=32, depth=2, num_heads=2)
GRID = 4  # SHAPE's training grid
OPTIONS = {"cayley_sparse": {"f": 0.5}}


def augmentation(shift=None, jitter=None, rescale=None, seed=0):
    return CoordinateAugmentation(shift, jitter, rescale, generator=torch.Generator().manual_seed(seed))


def model(name="rope", coordinates=Coordinates.grid, coordinate_augmentation=None):
    torch.manual_seed(0)
    return VisionTransformer(SHAPE, name, OPTIONS.get(name), absolute_table=name == "ape", seed=0,
                             coordinates=coordinates, coordinate_augmentation=coordinate_augmentation)


def test_grid_and_normalized_coordinates_are_identical_at_the_training_resolution():
    assert torch.equal(patch_coordinates(GRID, GRID, training_grid=GRID), patch_coordinates(GRID, GRID))
    images = torch.randn(2, 3, 16, 16)
    grid, normalized = model(), model(coordinates=Coordinates.normalized)
    assert torch.equal(grid(images), normalized(images))


def test_normalized_coordinates_subdivide_the_trained_span_at_twice_the_resolution():
    coords = patch_coordinates(2 * GRID, 2 * GRID, training_grid=GRID)[1:]
    xs = coords[:, 0].unique()
    assert torch.equal(xs.diff(), torch.full((2 * GRID - 1,), 0.5))  # half the spacing
    assert xs.min() > -0.5 and xs.max() < GRID - 0.5  # inside the trained patches' extent [-1/2, G - 1/2]
    torch.testing.assert_close(xs.mean(), torch.tensor((GRID - 1) / 2))  # same centre as the training grid
    assert torch.equal(coords[:, 1].unique(), xs)
    grid = patch_coordinates(2 * GRID, 2 * GRID)[1:]
    assert grid[:, 0].max() == 2 * GRID - 1  # the grid convention extends past the trained range instead


def test_normalized_coordinates_of_a_non_square_grid_follow_each_axis():
    coords = patch_coordinates(GRID, 3 * GRID, training_grid=GRID)[1:]
    assert torch.equal(coords[:, 1].unique(), torch.arange(GRID, dtype=torch.float32))
    torch.testing.assert_close(coords[:, 0].unique().diff(), torch.full((3 * GRID - 1,), 1 / 3))


def test_models_with_either_convention_differ_at_a_larger_resolution():
    images = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(model()(images), model(coordinates=Coordinates.normalized)(images), atol=1e-4)


# The conventions in training-grid units with (x, y) positions, which the augmentation moves; `flat` has one axis
# and `fraction` other units.
TWO_AXES = [coordinates for coordinates in Coordinates
            if position_axes(coordinates) == 2 and coordinates is not Coordinates.fraction]


@pytest.mark.parametrize("coordinates, name", [
    (coordinates, name) for coordinates in Coordinates for name in pos.available()
    if pos.takes_axes(name, position_axes(coordinates))])
def test_cls_keeps_the_identity_rotation_for_every_encoding_and_convention(name, coordinates):
    vit = model(name, coordinates, augmentation(shift=0.3, jitter=1.5, rescale=2.0)).train()
    coords = vit.token_coordinates(2 * GRID, 2 * GRID, device=None)
    assert torch.equal(coords[0], torch.zeros(position_axes(coordinates)))
    encoding = vit.blocks[0].attention.position
    with torch.no_grad():
        for parameter in encoding.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    q, k = torch.randn(2, 2, 1 + 4 * GRID**2, 16), torch.randn(2, 2, 1 + 4 * GRID**2, 16)
    rotated_q, rotated_k = encoding.rotate(q, k, coords)
    assert torch.equal(rotated_q[:, :, 0], q[:, :, 0]) and torch.equal(rotated_k[:, :, 0], k[:, :, 0])


def test_augmentation_is_off_by_default():
    cfg = compose_config()
    assert cfg.pos.coordinates == Coordinates.grid
    assert build_model(cfg).coordinate_augmentation is None
    vit = model().train()
    assert torch.equal(vit.token_coordinates(GRID, GRID, device=None), patch_coordinates(GRID, GRID))


@pytest.mark.parametrize("coordinates", TWO_AXES)
def test_augmentation_changes_the_patch_coordinates_in_training_mode_only(coordinates):
    vit = model(coordinates=coordinates, coordinate_augmentation=augmentation(shift=0.2, jitter=1.2, rescale=1.5))
    plain = patch_coordinates(GRID, GRID)
    assert torch.equal(vit.eval().token_coordinates(GRID, GRID, device=None), plain)
    first, second = (vit.train().token_coordinates(GRID, GRID, device=None) for _ in range(2))
    assert torch.equal(first[0], plain[0])
    assert (first[1:] != plain[1:]).any(dim=1).all() and not torch.equal(first, second)  # one draw per step


def dinov3_frame(coords):
    """DINOv3's coordinates: patch centres in [-1, 1] over the training image."""
    return 2 * (coords + 0.5) / GRID - 1


def test_augmentation_is_dinov3s_shift_jitter_and_rescale_in_its_frame():
    shift, jitter, rescale = 0.2, 1.3, 2.0
    augment = augmentation(shift, jitter, rescale, seed=4)
    draws = torch.Generator().manual_seed(4)
    offset = (2 * torch.rand(2, generator=draws) - 1) * shift
    per_axis = ((2 * torch.rand(2, generator=draws) - 1) * torch.log(torch.tensor(jitter))).exp()
    both = ((2 * torch.rand(1, generator=draws) - 1) * torch.log(torch.tensor(rescale))).exp()
    coords = patch_coordinates(2 * GRID, GRID, training_grid=GRID)
    augmented = augment(coords, GRID, augment.draw(coords.device))
    expected = (dinov3_frame(coords[1:]) + offset) * per_axis * both
    torch.testing.assert_close(dinov3_frame(augmented[1:]), expected)
    assert (offset.abs() <= shift).all() and ((1 / jitter <= per_axis) & (per_axis <= jitter)).all()


def test_augmentation_draws_leave_the_global_rng_alone_and_resume_from_the_state_dict():
    vit = model(coordinate_augmentation=augmentation(shift=0.5, rescale=2.0)).train()
    state = torch.get_rng_state()
    vit.token_coordinates(GRID, GRID, device=None)
    assert torch.equal(torch.get_rng_state(), state)
    saved = vit.state_dict()
    expected = [vit.token_coordinates(GRID, GRID, device=None) for _ in range(3)]
    resumed = model(coordinate_augmentation=augmentation(shift=0.5, rescale=2.0, seed=9)).train()
    resumed.load_state_dict(saved)
    assert all(torch.equal(resumed.token_coordinates(GRID, GRID, device=None), coords) for coords in expected)


@pytest.mark.parametrize("options, message", [
    ({"shift": -0.1}, "shift=-0.1 must be >= 0.0"), ({"jitter": 0.5}, "jitter=0.5 must be >= 1.0"),
    ({"rescale": 0.0}, "rescale=0.0 must be >= 1.0")])
def test_augmentation_values_out_of_range_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        augmentation(**options)


def test_a_run_with_normalized_coordinates_evaluates_the_extrapolation_sizes(monkeypatch, tmp_path):
    run_training(monkeypatch, f"hydra.run.dir={tmp_path}", "pos=comrope_ld", "pos.coordinates=normalized",
                 "pos.coordinate_augmentation.shift=0.1", "pos.coordinate_augmentation.rescale=1.5")
    results = read_results(tmp_path)
    assert results["status"] == "completed"
    assert set(results["extrapolation"]) == {"12", "16"}
    assert all(0 <= result["val_acc"] <= 1 and result["images"] > 0 for result in results["extrapolation"].values())


def test_fraction_coordinates_are_patch_centres_in_the_image_and_cls_can_sit_at_the_centre():
    shape = VitShape(image_size=16, patch_size=4, channels=1, num_classes=3, emb_dim=32, depth=1, num_heads=2)
    vit = VisionTransformer(shape, "comrope_ap", pos.configured_defaults("comrope_ap"),
                            coordinates=Coordinates.fraction, cls_position=ClsPosition.centre)
    coords = vit.token_coordinates(4, 4)
    assert torch.equal(coords[1:, 0].unique(), torch.tensor([0.125, 0.375, 0.625, 0.875]))
    assert torch.equal(coords[0], torch.tensor([0.5, 0.5]))  # ComRoPE's CLS
    larger = vit.token_coordinates(8, 8)  # a larger image: finer spacing inside [0, 1]
    assert larger[1:].min() == 1 / 16 and larger[1:].max() == 15 / 16 and torch.equal(larger[0], coords[0])
    grid = VisionTransformer(shape, "rope", pos.configured_defaults("rope"), cls_position=ClsPosition.centre)
    assert torch.equal(grid.token_coordinates(4, 4)[0], torch.tensor([1.5, 1.5]))


def test_cls_placement_and_units_separate_variants_in_the_record():
    from rpe_bench.results import RunConfigRecord
    cfg = compose_config("pos=comrope_ap", "pos.coordinates=fraction", "pos.cls_position=centre")
    assert RunConfigRecord.from_cfg(cfg).coordinates == "fraction, CLS at centre"
    assert RunConfigRecord.from_cfg(compose_config()).coordinates == "grid"


def test_the_augmentation_is_refused_in_fractions_of_the_image():
    with pytest.raises(ConfigError, match="pos.coordinate_augmentation.shift moves patches in training-grid units, "
                                          "and pos.coordinates=fraction"):
        validate(compose_config("pos.coordinates=fraction", "pos.coordinate_augmentation.shift=0.1"))
