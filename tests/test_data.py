"""Datasets read from tiny files in their real on-disk formats, and batches built from uint8 tensors."""

import pytest
import torch

from rpe_bench import data
from rpe_bench.data import (Augment, BatchIterator, DatasetError, DatasetNotFoundError, ImageTensors, crop_and_flip,
                            load_splits)
from tests.dataset_files import (MNIST_FILES, random_images, save_image, write_cifar10, write_cifar100,
                                 write_image_folder, write_mnist)


def assert_split(split: ImageTensors, expected):
    images, labels = expected
    assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
    assert torch.equal(split.images, images)
    assert torch.equal(split.labels, labels)


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_formats_round_trip(tmp_path, name, folder):
    expected = write_mnist(tmp_path, folder)
    train, test = load_splits(name, str(tmp_path), download=False, image_size=28, channels=1)
    assert_split(train, expected[0])
    assert_split(test, expected[1])
    # Found files are used as they are, without any download attempt.
    train, _ = load_splits(name, str(tmp_path), download=True, image_size=28, channels=1)
    assert_split(train, expected[0])


def test_cifar10_round_trips(tmp_path, cifar_without_md5):
    expected = write_cifar10(tmp_path)
    train, test = load_splits("cifar10", str(tmp_path), download=False, image_size=32, channels=3)
    assert_split(train, expected[0])
    assert_split(test, expected[1])


def test_cifar100_uses_fine_labels(tmp_path, cifar_without_md5):
    expected = write_cifar100(tmp_path)
    train, test = load_splits("cifar100", str(tmp_path), download=False, image_size=32, channels=3)
    assert_split(train, expected[0])
    assert_split(test, expected[1])


def test_channels_and_size_are_converted(tmp_path):
    (images, _), _ = write_mnist(tmp_path)
    train, _ = load_splits("mnist", str(tmp_path), download=False, image_size=32, channels=3)
    assert train.images.shape == (6, 3, 32, 32) and train.images.dtype == torch.uint8
    assert torch.equal(train.images[:, 0], train.images[:, 2])
    assert torch.equal(train.images[:, :1], data.resize_batch(images, 32))


def test_digits_are_sklearn_images_scaled_to_uint8_in_a_fixed_split():
    from sklearn.datasets import load_digits

    train, test = load_splits("digits", "unused", download=False, image_size=8, channels=1)
    assert (len(train), len(test)) == (1437, 360)
    assert train.images.shape == (1437, 1, 8, 8) and train.images.dtype == torch.uint8
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0
    digits = load_digits()
    assert torch.equal(torch.cat([train.labels, test.labels]).bincount(), torch.from_numpy(digits.target).bincount())
    first = torch.from_numpy(digits.images[0]).mul(255 / 16).round().to(torch.uint8)
    assert any(torch.equal(image[0], first) for image in torch.cat([train.images, test.images]))
    again, _ = load_splits("digits", "unused", download=False, image_size=8, channels=1)
    assert torch.equal(again.images, train.images)


def test_image_folder_decodes_converts_and_caches(tmp_path, monkeypatch):
    expected = write_image_folder(tmp_path)
    train, test = load_splits("image_folder", str(tmp_path), download=False, image_size=8, channels=3)
    assert_split(train, expected[0])
    assert_split(test, expected[1])
    assert (tmp_path / ".rpe_bench_cache_8_3.pt").exists()

    gray, _ = load_splits("image_folder", str(tmp_path), download=False, image_size=4, channels=1)
    assert gray.images.shape == (4, 1, 4, 4)

    def no_decoding(*args):
        raise AssertionError("decoded although the cache holds these files")

    with monkeypatch.context() as patch:
        patch.setattr(data, "decode_images", no_decoding)
        cached, _ = load_splits("image_folder", str(tmp_path), download=False, image_size=8, channels=3)
    assert_split(cached, expected[0])

    # A new file (a JPEG of another size) invalidates the cache and is resized.
    save_image(random_images(1, 3, 12, 8)[0], tmp_path / "train" / "dog" / "extra.jpg")
    train, _ = load_splits("image_folder", str(tmp_path), download=False, image_size=8, channels=3)
    assert train.images.shape == (5, 3, 8, 8) and train.labels.tolist() == [0, 0, 1, 1, 1]


@pytest.mark.parametrize("name,folder,file", [
    ("mnist", "MNIST/raw", "t10k-labels-idx1-ubyte"),
    ("fashion_mnist", "FashionMNIST/raw", "train-images-idx3-ubyte"),
    ("cifar10", "cifar-10-batches-py", "data_batch_5"),
    ("cifar100", "cifar-100-python", "meta"),
])
@pytest.mark.parametrize("download", [False, True])
def test_missing_dataset_names_folder_and_files_in_one_line(tmp_path, name, folder, file, download):
    with pytest.raises(DatasetNotFoundError) as error:
        load_splits(name, str(tmp_path), download=download, image_size=28, channels=1)
    message = str(error.value)
    assert "\n" not in message
    assert str(tmp_path / folder) in message and file in message and "RPE_BENCH_DATA" in message
    if download:
        assert "download failed" in message and "network disabled in tests" in message
    if name == "mnist":
        assert all(expected in message for expected in MNIST_FILES)


def test_missing_image_folder_names_the_folder(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="image_folder not found in .*train/<class>/"):
        load_splits("image_folder", str(tmp_path / "nothing"), download=False, image_size=8, channels=3)


def test_a_damaged_image_is_named_with_what_to_do(tmp_path):
    write_image_folder(tmp_path)
    damaged = tmp_path / "test" / "dog" / "1.png"
    damaged.write_bytes(damaged.read_bytes()[:20])
    with pytest.raises(DatasetError) as error:
        load_splits("image_folder", str(tmp_path), download=False, image_size=8, channels=3)
    message = str(error.value)
    assert "\n" not in message and str(damaged) in message and "replace it" in message


def test_a_damaged_cache_is_rebuilt_from_the_images(tmp_path):
    expected = write_image_folder(tmp_path)
    load_splits("image_folder", str(tmp_path), download=False, image_size=8, channels=3)
    (cache,) = tmp_path.glob(".rpe_bench_cache_*")
    cache.write_bytes(cache.read_bytes()[:100])
    with pytest.warns(UserWarning, match=f"cache {cache} is damaged"):
        train, _ = load_splits("image_folder", str(tmp_path), download=False, image_size=8, channels=3)
    assert torch.equal(train.images, expected[0][0]) and len(cache.read_bytes()) > 100


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown dataset 'svhn': available .*'mnist'"):
        load_splits("svhn", "unused", download=False, image_size=8, channels=1)


def tiny_data(count=10, channels=3, size=6):
    images = torch.arange(count * channels * size * size).reshape(count, channels, size, size) % 251
    return ImageTensors(images.to(torch.uint8), torch.arange(count))


def batches(data_, seed=None, **options):
    options = {"batch_size": 4, "shuffle": seed is not None, "device": "cpu", "mean": [0.5], "std": [0.25],
               "augment": None, **options}
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return list(BatchIterator(data_, generator=generator, **options))


def test_batches_are_normalised_float_in_order():
    tensors = tiny_data()
    images, labels = batches(tensors, mean=[0.1, 0.2, 0.3], std=[0.5, 0.6, 0.7])[0]
    mean, std = torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1), torch.tensor([0.5, 0.6, 0.7]).view(3, 1, 1)
    assert images.dtype == torch.float32 and images.shape == (4, 3, 6, 6)
    torch.testing.assert_close(images, (tensors.images[:4] / 255 - mean) / std)
    assert labels.tolist() == [0, 1, 2, 3]


def test_len_drop_last_and_limit_batches():
    tensors = tiny_data(count=10)
    for options, sizes in [({}, [4, 4, 2]), ({"drop_last": True}, [4, 4]), ({"limit_batches": 2}, [4, 4]),
                           ({"limit_batches": 5}, [4, 4, 2])]:
        assert [len(labels) for _, labels in batches(tensors, **options)] == sizes
        assert len(BatchIterator(tensors, generator=None, **{"batch_size": 4, "shuffle": False, "device": "cpu",
                                                             "mean": [0], "std": [1], **options})) == len(sizes)


def test_shuffling_is_a_permutation_reproducible_from_the_seed():
    tensors = tiny_data(count=10)
    order = [torch.cat([labels for _, labels in batches(tensors, seed=seed)]) for seed in (0, 0, 1)]
    assert torch.equal(order[0], order[1]) and not torch.equal(order[0], order[2])
    assert sorted(order[0].tolist()) == list(range(10)) and order[0].tolist() != list(range(10))
    iterator = BatchIterator(tensors, 10, True, torch.Generator().manual_seed(0), "cpu", [0], [1], None)
    first_epoch, second_epoch = [labels for _, labels in iterator], [labels for _, labels in iterator]
    assert not torch.equal(first_epoch[0], second_epoch[0])


def test_crop_and_flip_takes_the_window_at_each_offset():
    images = tiny_data(count=3, size=5).images
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    offsets, flips = torch.tensor([[0, 0], [2, 2], [1, 4]]), torch.tensor([False, False, True])
    out = crop_and_flip(images, 2, offsets, flips)
    assert torch.equal(out[0], padded[0, :, 0:5, 0:5])
    assert torch.equal(out[1], images[1])
    assert torch.equal(out[2], padded[2, :, 1:6, 4:9].flip(-1))


def test_augmentation_is_random_per_image_crop_or_flip_and_reproducible():
    tensors = tiny_data(count=64, size=6)

    def augmented(augment):  # one shuffled batch of all 64 images, in uint8 pixel values, and its sources
        images, labels = batches(tensors, seed=0, batch_size=64, mean=[0], std=[1 / 255], augment=augment)[0]
        assert images.shape == (64, 3, 6, 6) and sorted(labels.tolist()) == list(range(64))
        return images.round().to(torch.uint8), tensors.images[labels]

    flipped, sources = augmented(Augment(horizontal_flip=True))
    is_flipped = (flipped == sources.flip(-1)).flatten(1).all(1)
    assert ((flipped == sources).flatten(1).all(1) | is_flipped).all() and 0 < is_flipped.sum() < 64

    cropped, sources = augmented(Augment(random_crop_padding=2))
    padded = torch.nn.functional.pad(sources, (2, 2, 2, 2))
    offsets = set()
    for image, source in zip(cropped, padded):
        matches = [(row, column) for row in range(5) for column in range(5)
                   if torch.equal(image, source[:, row:row + 6, column:column + 6])]
        assert matches
        offsets.add(matches[0])
    assert len(offsets) > 5
    assert torch.equal(augmented(Augment(random_crop_padding=2))[0], cropped)


def test_shards_split_each_batch_of_the_same_epoch_between_processes():
    tensors, augment = tiny_data(count=11), Augment(random_crop_padding=2, horizontal_flip=True)
    whole = batches(tensors, seed=0, augment=augment)
    shards = [batches(tensors, seed=0, augment=augment, shard=(rank, 2)) for rank in range(2)]
    assert [len(labels) for _, labels in whole] == [4, 4, 3]
    assert [len(labels) for _, labels in shards[1]] == [2, 2, 1]
    for (images, labels), first, second in zip(whole, *shards):
        assert torch.equal(labels[0::2], first[1]) and torch.equal(labels[1::2], second[1])
        assert torch.equal(images[0::2], first[0]) and torch.equal(images[1::2], second[0])
    # A last batch with fewer images than processes is dropped, so every process runs the same steps.
    assert len(BatchIterator(tiny_data(count=9), 4, False, None, "cpu", [0], [1], shard=(0, 2))) == 2


def test_output_size_resizes_batches():
    images, _ = batches(tiny_data(size=6), output_size=12)[0]
    assert images.shape == (4, 3, 12, 12)
    constant = ImageTensors(torch.full((2, 1, 6, 6), 200, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64))
    images, _ = batches(constant, output_size=3)[0]
    torch.testing.assert_close(images, torch.full((2, 1, 3, 3), (200 / 255 - 0.5) / 0.25))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_batches_equal_cpu_batches_for_a_cpu_generator():
    tensors = tiny_data(count=50)
    augment = Augment(random_crop_padding=2, horizontal_flip=True)
    on_cpu = batches(tensors, seed=3, augment=augment)
    on_gpu = batches(tensors, seed=3, augment=augment, device="cuda")
    assert on_gpu[0][0].device.type == "cuda"
    for (cpu_images, cpu_labels), (gpu_images, gpu_labels) in zip(on_cpu, on_gpu):
        torch.testing.assert_close(gpu_images.cpu(), cpu_images)
        assert torch.equal(gpu_labels.cpu(), cpu_labels)
