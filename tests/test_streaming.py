"""dataset.loader=stream: an image folder decoded batch by batch by DataLoader workers gives the in-memory
loader's batches exactly (order, crops, flips, DDP shards), so paired comparisons survive the switch; `auto`
chooses by the decoded size against the job's memory."""
import pytest
import torch

from rpe_bench import launching
from rpe_bench.config import ConfigError, validate
from rpe_bench.data import Augment, BatchIterator, StreamingBatchIterator, image_folder_files, load_splits
from rpe_bench.launching import loader_choice
from tests.dataset_files import write_digits_folder
from tests.helpers import compose_config, read_results, run_training


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    return write_digits_folder(tmp_path_factory.mktemp("digits_folder"))


def both_loaders(folder, **options):
    memory, _ = load_splits("image_folder", str(folder), download=False, image_size=8, channels=1)
    files, _ = image_folder_files(str(folder), image_size=8, channels=1)
    common = dict(batch_size=64, shuffle=True, device="cpu", mean=[0.3], std=[0.38],
                  augment=Augment(random_crop_padding=1, horizontal_flip=True), **options)
    return (BatchIterator(memory, generator=torch.Generator().manual_seed(7), **common),
            StreamingBatchIterator(files, generator=torch.Generator().manual_seed(7), workers=2, **common))


@pytest.mark.parametrize("shard", [(0, 1), (1, 2)])
def test_streaming_batches_equal_the_in_memory_ones(digits_folder, shard):
    in_memory, streamed = both_loaders(digits_folder, shard=shard, limit_batches=6)
    assert len(in_memory) == len(streamed) == 6
    pairs = list(zip(in_memory, streamed, strict=True))
    for (memory_images, memory_labels), (stream_images, stream_labels) in pairs:
        assert torch.equal(memory_images, stream_images) and torch.equal(memory_labels, stream_labels)
    assert pairs[0][0][0].shape[0] == 64 // shard[1]


def test_a_streamed_run_takes_the_in_memory_runs_steps(digits_folder, monkeypatch, tmp_path):
    run = ["dataset=image_folder", f"dataset.root={digits_folder}", "dataset.image_size=8", "dataset.channels=1",
           "dataset.num_classes=10", "dataset.mean=[0.3]", "dataset.std=[0.38]", "dataset.patch_size=2",
           "dataset.extrapolation_sizes=[]", "trainer.epochs=2", "logger.mode=disabled", "dataset.workers=1"]
    results = {}
    for loader in ("memory", "stream"):
        run_training(monkeypatch, *run, f"dataset.loader={loader}", f"hydra.run.dir={tmp_path / loader}")
        results[loader] = read_results(tmp_path / loader)
        assert f"{loader} loader: dataset.loader={loader}" in (tmp_path / loader / "train.log").read_text()
    for memory_epoch, stream_epoch in zip(results["memory"]["history"], results["stream"]["history"], strict=True):
        for field in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert memory_epoch[field] == stream_epoch[field], field


def test_auto_streams_a_folder_larger_than_a_quarter_of_the_jobs_memory(digits_folder, monkeypatch):
    dataset = compose_config("dataset=image_folder", f"dataset.root={digits_folder}", "dataset.image_size=8",
                             "dataset.channels=1").dataset
    decoded = launching.decoded_bytes(dataset)
    monkeypatch.setenv("SLURM_MEM_PER_NODE", str(4 * decoded // 2**20 + 1))  # MB: more than four times
    kind, why = loader_choice(dataset)
    assert kind == "memory" and "at most a quarter" in why
    monkeypatch.setattr(launching, "available_memory_bytes", lambda: 3 * decoded)
    kind, why = loader_choice(dataset)
    assert kind == "stream" and "more than a quarter" in why
    folder = ["dataset=image_folder", f"dataset.root={digits_folder}", "dataset.image_size=8", "dataset.channels=1"]
    in_memory = launching.job_memory_bytes(compose_config(*folder, "dataset.loader=memory"))
    streamed = launching.job_memory_bytes(compose_config(*folder, "dataset.loader=stream"))
    assert in_memory - streamed == 2 * decoded  # streaming holds no decoded copy of the folder


def test_streaming_other_datasets_is_refused_with_one_line():
    with pytest.raises(ConfigError, match="dataset.loader=stream reads image_folder and video_folder only.*allowed "
                                          "here are auto"):
        validate(compose_config("dataset=mnist", "dataset.loader=stream"))
