"""Clips: moving_mnist drawn from the real digits, video folders in the extracted-UCF101 layout, tubelets, (t, x, y)
positions, and time extrapolation."""
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from rpe_bench import pos
from rpe_bench.config import ConfigError, Coordinates, validate
from rpe_bench.coordinates import grid_coordinates, patch_coordinates
from rpe_bench.data import BatchIterator, DatasetError, DatasetNotFoundError, ImageTensors
from rpe_bench.loop import batches_for
from rpe_bench.model import VisionTransformer, VitShape
from rpe_bench.run_folder import RunFolderRefused, check_same_run, run_identity
from rpe_bench.splits import load_dataset
from rpe_bench.video import MovingLines, draw_lines, evenly_spaced, load_moving_mnist, render_clips
from tests.dataset_files import write_mnist
from tests.helpers import TINY_RUN, compose_config, read_results, run_training

CLIP_RUN = ["dataset=moving_mnist", "dataset.moving.train_clips=64", "dataset.moving.test_clips=32",
            "dataset.image_size=16", "dataset.moving.digit_size=8", "dataset.moving.min_travel=4",
            "dataset.patch_size=4", "dataset.extrapolation_sizes=[24]", "dataset.extrapolation_frames=[8]"]


def moving_config(root, **moving):
    return OmegaConf.create({"name": "moving_mnist", "root": str(root), "download": False, "image_size": 16,
                             "channels": 1, "frames": 4, "moving": {"train_clips": 40, "test_clips": 20,
                                                                    "digit_size": 8, "min_travel": 4,
                                                                    "generator_seed": 0, **moving}})


@pytest.fixture
def mnist_root(tmp_path):
    write_mnist(tmp_path)
    return tmp_path


def test_moving_mnist_is_the_same_clips_at_its_seed_from_each_splits_own_digits(mnist_root):
    train, test = load_moving_mnist(moving_config(mnist_root), frames=4)
    again, _ = load_moving_mnist(moving_config(mnist_root), frames=4)
    other, _ = load_moving_mnist(moving_config(mnist_root, generator_seed=1), frames=4)
    assert train.images.shape == (40, 1, 4, 16, 16) and test.images.shape == (20, 1, 4, 16, 16)
    assert torch.equal(train.images, again.images) and torch.equal(train.labels, again.labels)
    assert not torch.equal(train.images, other.images)
    # The written train digits are labelled 0..5 and the test digits 9, 0, 3, 3: label = 2 * digit + direction.
    assert set((train.labels // 2).tolist()) <= set(range(6)) and set((test.labels // 2).tolist()) <= {0, 3, 9}
    assert set(train.labels.tolist() + test.labels.tolist()) <= set(range(20))
    assert 0 < train.labels.remainder(2).float().mean() < 1


def test_a_digit_moves_on_a_straight_line_in_the_direction_its_label_names(mnist_root):
    train, _ = load_moving_mnist(moving_config(mnist_root), frames=4)
    for clip, label in zip(train.images[:, 0], train.labels):
        lit = [torch.nonzero(frame).float().mean(dim=0) for frame in clip]  # each frame's bright centre (row, col)
        steps = torch.stack([after - before for before, after in zip(lit, lit[1:])])
        assert bool((steps[:, 1] > 0).all()) == bool(label % 2)  # rightward exactly when the label says so


def test_each_clip_is_its_twins_frames_in_reverse_order_with_the_other_direction():
    lines = draw_lines(50, 7, canvas=16, digit_size=8, min_travel=4, generator=torch.Generator().manual_seed(3))
    twins = MovingLines(lines.digits, lines.ends, lines.starts, 1 - lines.rightwards)
    digits = torch.randint(1, 256, (7, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    clips, twin_clips = (render_clips(digits, drawn, 5, 16) for drawn in (lines, twins))
    assert torch.equal(twin_clips, clips.flip(2))
    # draw_lines gives both directions from the same distribution: the left end is always the smaller column.
    columns = torch.where(lines.rightwards.bool(), lines.starts[:, 1], lines.ends[:, 1])
    assert bool((columns <= torch.where(lines.rightwards.bool(), lines.ends[:, 1], lines.starts[:, 1]) - 4).all())


def test_without_positions_one_frame_tubelets_cannot_tell_a_clip_from_its_reverse():
    """So on moving_mnist `none` is at chance on the direction: each clip's twin is as likely and gets the same
    logits. A two-frame tubelet sees the order inside itself, and a rotary encoding sees it through t."""
    torch.manual_seed(0)
    clips = torch.randn(3, 1, 4, 8, 8)
    for encoding, tubelet, same in (("none", 1, True), ("none", 2, False), ("rope", 1, False)):
        torch.manual_seed(0)
        shape = VitShape(image_size=8, patch_size=4, channels=1, num_classes=5, emb_dim=16, depth=2, num_heads=2,
                         frames=4, tubelet_frames=tubelet)
        vit = VisionTransformer(shape, encoding).eval()
        with torch.no_grad():
            forward, backward = vit(clips), vit(clips.flip(2))
        # Summing the same values in another token order: a few float32 roundings per layer.
        tolerance = 64 * torch.finfo(torch.float32).eps * forward.abs().max().item()
        assert (forward - backward).abs().max().item() <= tolerance if same else \
            (forward - backward).abs().max().item() > 1e3 * tolerance


def test_a_longer_clip_samples_the_same_line_at_more_points(mnist_root):
    short, short_test = load_moving_mnist(moving_config(mnist_root), frames=4)
    long, long_test = load_moving_mnist(moving_config(mnist_root), frames=7)
    assert torch.equal(long.images[:, :, ::2], short.images) and torch.equal(long.labels, short.labels)
    assert torch.equal(long_test.images[:, :, ::2], short_test.images)
    assert evenly_spaced(7, 4) == [0, 2, 4, 6] and evenly_spaced(2, 4) == [0, 0, 1, 1]


def test_moving_mnist_without_its_digits_names_the_missing_files(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="MNIST not found or corrupted in .*train-images-idx3-ubyte"):
        load_moving_mnist(moving_config(tmp_path), frames=4)


def write_video_folder(root, frames_per_clip=(5, 3, 6, 4), size=8):
    """PNG frames (lossless) whose pixels hold the clip's number and the frame's index, in
    <split>/<class>/<clip>/<frame>.png; the test split holds one clip of each class."""
    layout = {"train": [("jump", 0), ("jump", 1), ("run", 2)], "test": [("jump", 3), ("run", 0)]}
    for split, clips in layout.items():
        for number, (label, length) in enumerate(clips):
            clip = root / split / label / f"v_{label}_g{number:02d}"
            clip.mkdir(parents=True)
            for index in range(frames_per_clip[length]):
                pixels = np.full((size, size, 3), (10 * number, 20 * index, 7), dtype=np.uint8)
                Image.fromarray(pixels).save(clip / f"{index + 1:06d}.png")
    (root / "train" / "jump" / "README.txt").write_text("not a clip")  # files beside the clips are ignored


def video_config(root, loader="memory"):
    cfg = compose_config(*TINY_RUN, "dataset=video_folder", f"dataset.root={root}", "dataset.image_size=8",
                         "dataset.patch_size=4", "dataset.frames=4", "dataset.num_classes=2",
                         f"dataset.loader={loader}", "dataset.workers=0", "trainer.batch_size=2")
    return cfg


def test_video_folder_samples_frames_evenly_and_labels_by_sorted_class(tmp_path):
    write_video_folder(tmp_path)
    train, test = load_dataset(video_config(tmp_path).dataset, "memory")
    assert train.images.shape == (3, 3, 4, 8, 8) and train.labels.tolist() == [0, 0, 1]
    assert test.labels.tolist() == [0, 1]
    frame_index = train.images[:, 1, :, 0, 0] // 20  # the green channel holds 20 * frame index
    assert frame_index.tolist() == [evenly_spaced(5, 4), evenly_spaced(3, 4), evenly_spaced(6, 4)]
    assert (train.images[:, 0, :, 0, 0] // 10).tolist() == [[0] * 4, [1] * 4, [2] * 4]


def test_video_folder_streams_the_same_batches_it_holds_in_memory(tmp_path):
    write_video_folder(tmp_path)
    cfg = video_config(tmp_path, loader="stream")
    for split, data in zip(("train", "test"), load_dataset(cfg.dataset, "memory")):
        streamed = load_dataset(cfg.dataset, "stream")[split == "test"]
        held, files = batches_for(cfg, data, "cpu", split=split), batches_for(cfg, streamed, "cpu", split=split)
        held.generator, files.generator = (torch.Generator().manual_seed(1) for _ in range(2))  # one epoch's plan
        pairs = list(zip(held, files, strict=True))
        assert pairs and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in pairs)
        assert pairs[0][0][0].shape[1:] == (3, 4, 8, 8)


def test_video_folder_refuses_a_clip_without_frames_and_a_missing_folder_with_one_line(tmp_path):
    with pytest.raises(DatasetNotFoundError) as missing:
        load_dataset(video_config(tmp_path / "absent").dataset, "memory")
    (line,) = str(missing.value).splitlines()
    assert "expected train/<class>/<clip>/ and test/<class>/<clip>/" in line and "absent" in line
    write_video_folder(tmp_path)
    (tmp_path / "test" / "run" / "v_empty").mkdir()
    with pytest.raises(DatasetError, match=r"clip .*v_empty holds no frames"):
        load_dataset(video_config(tmp_path).dataset, "memory")


def test_clip_coordinates_are_t_x_y_with_the_image_grid_unchanged():
    coords = grid_coordinates((2, 3, 4))
    assert coords.shape == (1 + 24, 3) and torch.equal(coords[0], torch.zeros(3))
    # Row-major over (t, row, column): the token after the first frame's last is t=1 at the origin.
    assert coords[1:].tolist()[:5] == [[0, 0, 0], [0, 1, 0], [0, 2, 0], [0, 3, 0], [0, 0, 1]]
    assert coords[13].tolist() == [1, 0, 0]
    assert torch.equal(grid_coordinates((3, 4)), patch_coordinates(3, 4))
    # normalized: at the training grid the integers, on twice the frames the same span at half spacing.
    assert torch.equal(grid_coordinates((2, 3, 4), training_grid=(2, 3, 4)), coords)
    longer = grid_coordinates((4, 3, 4), training_grid=(2, 3, 4))[1:, 0].unique()
    torch.testing.assert_close(longer, torch.tensor([-0.25, 0.25, 0.75, 1.25]))


def test_tubelets_give_the_token_grid_and_ape_spreads_its_table_over_t_x_y():
    torch.manual_seed(0)
    shape = VitShape(image_size=8, patch_size=4, channels=1, num_classes=3, emb_dim=16, depth=1, num_heads=2,
                     frames=4, tubelet_frames=2)
    vit = VisionTransformer(shape, "ape", absolute_table=True)
    assert shape.token_grid == (2, 2, 2) and vit.absolute_table.shape == (1, 8, 16)
    assert vit.absolute_positions(2, 2, 2) is vit.absolute_table
    longer = vit.absolute_positions(4, 2, 2)
    assert longer.shape == (1, 16, 16)
    # Trilinear with half-pixel centres: doubling time repeats each frame's table at the ends.
    torch.testing.assert_close(longer.view(4, 4, 16)[0], vit.absolute_table.view(2, 4, 16)[0])
    assert vit(torch.randn(2, 1, 8, 8, 8)).shape == (2, 3)  # 8 frames: twice the tubelets of training


ENCODING_RUNS = [(name, Coordinates.grid) for name in pos.available()] + [
    ("comrope_ld", Coordinates.normalized), ("ape", Coordinates.normalized), ("ape", Coordinates.flat)]


@pytest.mark.parametrize("encoding, coordinates", ENCODING_RUNS)
def test_every_encoding_trains_on_clips_and_is_evaluated_on_longer_and_larger_ones(monkeypatch, tmp_path,
                                                                                  mnist_root, encoding, coordinates):
    monkeypatch.setenv("RPE_BENCH_DATA", str(mnist_root))
    # TINY_RUN's 16-channel heads hold two ComRoPE-AP blocks of 8: blocks of 4 give each of (t, x, y) one.
    options = ["pos.options.block_size=4"] if encoding == "comrope_ap" else []
    run_training(monkeypatch, f"hydra.run.dir={tmp_path / 'run'}", *CLIP_RUN, f"pos={encoding}", *options,
                 f"pos.coordinates={coordinates.value}", "trainer.batch_size=16", "dataset.download=false")
    results = read_results(tmp_path / "run")
    assert results["status"] == "completed"
    config = results["config"]
    assert (config["frames"], config["tubelet_frames"]) == (4, 1)
    axes = {"flat": ["index"]}.get(coordinates.value, ["t", "x", "y"])
    assert config["position_axes"] == axes
    assert set(results["extrapolation"]) == {"24", "t8"}
    assert results["resolved_config"]["dataset"]["moving"]["generator_seed"] == 0


def test_a_clip_run_records_how_rope_splits_its_pairs_among_t_x_y(monkeypatch, tmp_path, mnist_root):
    monkeypatch.setenv("RPE_BENCH_DATA", str(mnist_root))
    # TINY_RUN's head dim is 16: 8 pairs over three axes.
    run_training(monkeypatch, f"hydra.run.dir={tmp_path}", *CLIP_RUN, "pos=rope", "trainer.batch_size=16",
                 "dataset.extrapolation_frames=[]", "dataset.extrapolation_sizes=[]")
    config = read_results(tmp_path)["config"]
    assert config["rotation_pairs_per_axis"] == [3, 3, 2] and config["position_axes"] == ["t", "x", "y"]


@pytest.mark.parametrize("overrides, message", [
    (["dataset.tubelet_frames=3"], "dataset.tubelet_frames=3 does not divide dataset.frames=4: allowed [1, 2, 4]"),
    (["dataset.tubelet_frames=2", "dataset.extrapolation_frames=[7]"],
     "dataset.extrapolation_frames holds 7, not a multiple of dataset.tubelet_frames=2"),
    (["dataset.moving.min_travel=20"], "dataset.moving.digit_size=12 and min_travel=20 do not fit image_size 20: "
                                       "allowed 1 <= digit_size and 1 <= min_travel <= image_size - digit_size"),
    (["dataset.loader=stream"], "dataset.loader=stream reads image_folder and video_folder only, and "
                                "dataset=moving_mnist is loaded in memory: allowed here are auto, memory"),
])
def test_clip_settings_out_of_range_are_refused_with_one_line(overrides, message):
    with pytest.raises(ConfigError) as refused:
        validate(compose_config(*TINY_RUN, "dataset=moving_mnist", *overrides))
    assert str(refused.value) == message


def test_longer_clips_on_an_image_dataset_are_refused():
    with pytest.raises(ConfigError, match=r"dataset.extrapolation_frames=\[8\] needs clips, and dataset=digits"):
        validate(compose_config(*TINY_RUN, "dataset.extrapolation_frames=[8]"))


def test_a_clip_batch_is_normalised_per_channel_over_every_frame():
    clips = torch.randint(0, 256, (3, 2, 4, 4, 4), dtype=torch.uint8)
    batches = BatchIterator(ImageTensors(clips, torch.arange(3)), 3, shuffle=False, generator=None, device="cpu",
                            mean=[0.5, 0.25], std=[0.5, 0.25], output_size=6)
    images, _ = next(iter(batches))
    assert images.shape == (3, 2, 4, 6, 6)
    expected = (clips.float() / 255 - torch.tensor([0.5, 0.25]).view(2, 1, 1, 1)) / torch.tensor([0.5, 0.25]).view(
        2, 1, 1, 1)
    frame = torch.nn.functional.interpolate(expected[:, :, 1], size=(6, 6), mode="bilinear", antialias=True)
    # The multiply-add and the divide round differently: a few float32 roundings of the largest value.
    tolerance = 8 * torch.finfo(torch.float32).eps * expected.abs().max().item()
    torch.testing.assert_close(images[:, :, 1], frame, rtol=0, atol=tolerance)


def test_an_image_runs_identity_is_what_folders_made_before_clips_saved_so_they_resume():
    identity = run_identity(compose_config(*TINY_RUN))
    assert set(identity["dataset"]) == {"name", "image_size", "channels", "num_classes"}
    clips = run_identity(compose_config(*TINY_RUN, "dataset=moving_mnist"))["dataset"]
    assert (clips["frames"], clips["tubelet_frames"], clips["moving"]["generator_seed"]) == (4, 1, 0)


def test_a_clip_checkpoint_is_not_resumed_with_other_tubelets(monkeypatch, tmp_path, mnist_root, capsys):
    monkeypatch.setenv("RPE_BENCH_DATA", str(mnist_root))
    shrunk = [*CLIP_RUN, "pos=rope", "trainer.batch_size=16", "dataset.extrapolation_frames=[]",
              "dataset.extrapolation_sizes=[]"]
    run_training(monkeypatch, f"hydra.run.dir={tmp_path}", *shrunk)
    with pytest.raises(SystemExit) as refused:
        run_training(monkeypatch, f"hydra.run.dir={tmp_path}", *shrunk, "dataset.tubelet_frames=2",
                     "trainer.epochs=2")
    assert refused.value.code == 2
    assert "dataset.tubelet_frames is 1 there and 2 here" in capsys.readouterr().err
    assert [epoch["epoch"] for epoch in read_results(tmp_path)["history"]] == [1]


def test_a_checkpoint_whose_identity_predates_a_key_still_resumes(tmp_path):
    current = run_identity(compose_config(*TINY_RUN, "dataset=moving_mnist"))
    older = {**current, "dataset": {key: value for key, value in current["dataset"].items()
                                    if key not in ("frames", "tubelet_frames", "moving")}}
    check_same_run(tmp_path, older, current)
    with pytest.raises(RunFolderRefused, match="dataset.image_size is 32 there and 20 here"):
        check_same_run(tmp_path, {**older, "dataset": {**older["dataset"], "image_size": 32}}, current)
