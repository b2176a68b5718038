"""A limited evaluation (trainer.limit_val_batches, limit_extrapolation_batches) reads a class-stratified subset
of the test split, drawn from a seed of its own and the same for every run, and says so in results.json: an
image folder lists its test images class by class, so its first N batches would be one or two classes."""
import pytest
import torch

from rpe_bench.data import ImageTensors, split_subset, stratified_subset
from rpe_bench.loop import batches_for
from rpe_bench.splits import load_dataset
from tests.dataset_files import write_digits_folder
from tests.helpers import TINY_RUN, compose_config, read_results, run_training


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    return write_digits_folder(tmp_path_factory.mktemp("digits_folder"))


def test_a_stratified_subset_keeps_each_class_share_and_is_fixed_by_its_seed():
    labels = torch.arange(10).repeat_interleave(torch.tensor([1000] * 9 + [500]))  # class-sorted, one class half
    indices = stratified_subset(labels, 2048, seed=0)
    counts = torch.bincount(labels[indices], minlength=10)
    expected = 2048 * torch.tensor([1000] * 9 + [500]) / 9500
    assert (counts - expected).abs().max() <= 1 and counts.sum() == 2048
    assert torch.equal(indices, indices.sort().values) and len(indices.unique()) == 2048
    assert torch.equal(indices, stratified_subset(labels, 2048, seed=0))
    assert not torch.equal(indices, stratified_subset(labels, 2048, seed=1))
    assert not torch.equal(indices, torch.arange(2048))  # not the first N: those are two classes and a bit


def test_limited_batches_read_the_subset_and_every_class_in_memory_and_streamed(digits_folder):
    cfg = compose_config(*TINY_RUN, "dataset=image_folder", f"dataset.root={digits_folder}", "dataset.image_size=8",
                         "dataset.channels=1", "dataset.mean=[0.5]", "dataset.std=[0.5]", "dataset.workers=0",
                         "trainer.limit_val_batches=2")
    memory, files = (load_dataset(cfg.dataset, loader)[1] for loader in ("memory", "stream"))
    assert memory.labels[:128].unique().tolist() == [0, 1, 2, 3]  # the first two batches of the sorted folder
    read = []
    for data in (memory, files):
        batches = batches_for(cfg, data, "cpu", split="test")
        labels = torch.cat([labels for _, labels in batches])
        assert len(labels) == 128 and labels.unique().tolist() == list(range(10))
        read.append((torch.cat([images for images, _ in batches]), labels, batches.evaluation_subset))
    assert torch.equal(read[0][0], read[1][0]) and read[0][2] == read[1][2]
    assert read[0][2]["images"] == 128 and read[0][2]["of"] == len(memory.labels)
    assert sum(read[0][2]["per_class"].values()) == 128
    whole = batches_for(cfg, memory, "cpu", split="test", limit_batches=100)
    assert whole.evaluation_subset is None and len(whole) == 6  # 360 images: the whole split, no subset


def test_split_subset_takes_the_same_samples_from_tensors_and_files(digits_folder):
    cfg = compose_config(*TINY_RUN, "dataset=image_folder", f"dataset.root={digits_folder}", "dataset.image_size=8",
                         "dataset.channels=1")
    memory, files = (load_dataset(cfg.dataset, loader)[1] for loader in ("memory", "stream"))
    indices = torch.tensor([3, 40, 359])
    held, streamed = split_subset(memory, indices), split_subset(files, indices)
    assert isinstance(held, ImageTensors) and torch.equal(held.labels, streamed.labels)
    assert torch.equal(held.images, torch.stack([streamed[index] for index in range(3)]))


def test_every_run_records_the_same_subset_it_evaluated_on(monkeypatch, tmp_path, digits_folder):
    common = ["dataset=image_folder", f"dataset.root={digits_folder}", "dataset.image_size=8", "dataset.channels=1",
              "dataset.mean=[0.5]", "dataset.std=[0.5]",
              "dataset.extrapolation_sizes=[16]", "trainer.limit_extrapolation_batches=1"]
    records = []
    for encoding in ("rope", "reflection"):
        run_training(monkeypatch, f"hydra.run.dir={tmp_path / encoding}", *common, f"pos={encoding}")
        records.append(read_results(tmp_path / encoding)["evaluation_subsets"])
    assert records[0] == records[1]
    val, extrapolation = records[0]["val"], records[0]["extrapolation"]
    assert (val["images"], extrapolation["images"]) == (128, 64)
    assert len(val["per_class"]) == 10 and val["seed"] == 0
    assert read_results(tmp_path / "rope")["extrapolation"]["16"]["images"] == 64
