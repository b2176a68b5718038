"""Datasets -> in-memory uint8 tensors, and batches built on the device by indexing them.

    train, test = load_splits("cifar10", root, download=True, image_size=32, channels=3)
    batches = BatchIterator(train, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(0),
                            device="cuda", mean=[0.49, 0.48, 0.45], std=[0.25, 0.24, 0.26],
                            augment=Augment(random_crop_padding=4, horizontal_flip=True))
    for epoch in range(epochs):
        for images, labels in batches:  # float32 (B, C, H, W) normalised, int64 (B,), both on the device
            ...
    BatchIterator(test, 256, shuffle=False, generator=None, device="cuda", mean=..., std=..., augment=None,
                  output_size=48)  # resolution extrapolation: batches resized with `resize_batch`

Datasets (`load_splits` names):
  mnist, fashion_mnist, cifar10, cifar100  torchvision's files under root (download=download).
  digits        scikit-learn's bundled 8x8 digits (real data, no download); a fixed permutation (seed 0) puts
                360 images in test and 1437 in train.
  image_folder  root/train/<class>/*.jpg|png|... and root/test/<class>/...; decoded once (PIL), then cached in
                root/.rpe_bench_cache_<size>_<channels>.pt, rebuilt when the list of files changes.
Every split is converted to `channels` (1 or 3) and resized to image_size x image_size when it differs.
Missing files that cannot be downloaded raise DatasetNotFoundError with one line naming the folder and files.

Build one BatchIterator per split and iterate it every epoch: its tensors move to the device in the
constructor, once. Each pass draws the order, crop offsets and flips for the whole epoch from the generator
(on the generator's device), so a CPU generator with a given seed gives the same batches on CPU and GPU;
under DDP, shard=(rank, world_size) hands each process its share of those same batches.
"""
import dataclasses
import hashlib
import os
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.transforms.v2.functional import rgb_to_grayscale

from rpe_bench.files import atomic_write

DIGITS_TEST_SIZE = 360
ROOT_HINT = "Set RPE_BENCH_DATA or dataset.root=..."


class DatasetError(ValueError):
    """A dataset that cannot be read; the message is one line naming the folder or file and what to do."""


class DatasetNotFoundError(DatasetError):
    """A dataset's files are missing and were not downloaded."""


@dataclass
class ImageTensors:
    images: torch.Tensor  # uint8 (N, C, H, W), or clips (N, C, T, H, W) (rpe_bench.video)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Augment:
    random_crop_padding: int = 0  # zero-pad each side, then crop back to the original size at a random offset
    horizontal_flip: bool = False


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) uint8 or float -> (B, C, size, size), bilinear with antialiasing (it matters when shrinking);
    clips (B, C, T, H, W) frame by frame."""
    frames = images.flatten(1, -3)
    resized = F.interpolate(frames, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.view(*images.shape[:-2], size, size)


def conform(images: torch.Tensor, image_size: int, channels: int) -> torch.Tensor:
    if images.shape[1] != channels:
        images = rgb_to_grayscale(images) if channels == 1 else images.expand(-1, channels, -1, -1)
    if images.shape[-2:] != (image_size, image_size):
        images = resize_batch(images, image_size)
    return images.contiguous()


def one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def torchvision_loader(dataset_class, folder: str, expected: Sequence[str]):
    """A loader for a torchvision dataset whose files sit in root/folder."""

    def load(root: str, download: bool, image_size: int, channels: int):
        try:
            splits = [dataset_class(root, train=train, download=download) for train in (True, False)]
        except (RuntimeError, OSError) as error:  # torchvision's missing files and failed downloads
            reason = f"download failed: {one_line(error)}" if download else "dataset.download=false"
            raise DatasetNotFoundError(
                f"{dataset_class.__name__} not found or corrupted in {os.path.join(root, folder)} (expected "
                f"{', '.join(expected)}); {reason}. {ROOT_HINT}") from error
        tensors = []
        for split in splits:
            images = torch.as_tensor(split.data)  # MNIST: (N, H, W) tensor, CIFAR: (N, H, W, C) numpy array
            images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
            tensors.append(ImageTensors(images, torch.as_tensor(split.targets, dtype=torch.int64)))
        return tuple(tensors)

    return load


def mnist_loader(dataset_class):
    expected = [os.path.splitext(name)[0] for name, _ in dataset_class.resources]  # stored uncompressed
    return torchvision_loader(dataset_class, os.path.join(dataset_class.__name__, "raw"), expected)


def cifar_loader(dataset_class):
    expected = [name for name, _ in dataset_class.train_list + dataset_class.test_list]
    return torchvision_loader(dataset_class, dataset_class.base_folder, expected + [dataset_class.meta["filename"]])


def load_digits(root: str, download: bool, image_size: int, channels: int):
    from sklearn.datasets import load_digits as sklearn_digits  # imported here: scikit-learn takes a second

    digits = sklearn_digits()
    images = torch.from_numpy(digits.images).mul(255 / 16).round().to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(digits.target).to(torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train, test = order[DIGITS_TEST_SIZE:], order[:DIGITS_TEST_SIZE]
    return ImageTensors(images[train], labels[train]), ImageTensors(images[test], labels[test])


def decode_image_file(path: str, image_size: int, channels: int) -> np.ndarray:
    """One image file as uint8 (image_size, image_size, channels): the one decoder of both loaders (PIL), so
    that streaming gives the in-memory loader's pixels bit for bit."""
    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(path) as image:
            image = image if image.mode == mode else image.convert(mode)
            if image.size != (image_size, image_size):  # Pillow's bilinear antialiases, as resize_batch does
                image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.array(image).reshape(image_size, image_size, channels)  # writable, for torch.from_numpy
    except (OSError, ValueError, SyntaxError) as error:  # Pillow's errors for truncated or foreign files
        raise DatasetError(f"image {path} cannot be decoded ({one_line(error)}): replace it, or move it out "
                           f"of the folder") from None


def decode_images(samples, image_size: int, channels: int) -> ImageTensors:
    # One thread: PIL releases the GIL while decoding, yet threads measured no faster on these 32x32 JPEGs.
    pixels = [decode_image_file(path, image_size, channels) for path, _ in samples]
    images = torch.from_numpy(np.stack(pixels)).view(len(pixels), image_size, image_size, channels)
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return ImageTensors(images.permute(0, 3, 1, 2).contiguous(), labels)


@dataclass
class ImageFiles(torch.utils.data.Dataset):
    """A split of an image folder left on disk: decoded image by image when a batch asks for it."""
    samples: list  # (path, label), in the folder's sorted order: the in-memory split's order
    image_size: int
    channels: int
    pixel_axes = 2

    def __post_init__(self) -> None:
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> torch.Tensor:
        pixels = decode_image_file(self.samples[index][0], self.image_size, self.channels)
        return torch.from_numpy(pixels).permute(2, 0, 1)


def save_cache(payload, path: str) -> None:
    try:
        with atomic_write(path) as temp:
            torch.save(payload, temp)
    except OSError as error:  # a read-only data folder still loads, only slower next time
        warnings.warn(f"could not cache decoded images in {path}: {error}")


def image_folder_samples(root: str) -> list[list]:
    """(path, label) of every image in root/train/<class>/ and root/test/<class>/, labels by sorted class name."""
    try:
        _, class_to_index = find_classes(os.path.join(root, "train"))
        return [make_dataset(os.path.join(root, split), class_to_index, extensions=IMG_EXTENSIONS)
                for split in ("train", "test")]
    except FileNotFoundError as error:
        raise DatasetNotFoundError(
            f"image_folder not found in {root} (expected train/<class>/ and test/<class>/ holding "
            f"image files): {one_line(error)}. {ROOT_HINT}") from error


def cached_splits(cache: str, listing: str, decode) -> tuple[ImageTensors, ImageTensors]:
    """(train, test) from `cache` when it was made from the same `listing` of files, else decode() and cache
    them: the cache is derived from the files alone, so a damaged or stale one is decoded again and replaced."""
    key = hashlib.sha256(listing.encode()).hexdigest()
    if os.path.exists(cache):
        try:
            saved = torch.load(cache, weights_only=True)
            if saved["key"] == key:
                return ImageTensors(*saved["train"]), ImageTensors(*saved["test"])
        except Exception as error:
            warnings.warn(f"cache {cache} is damaged ({type(error).__name__}); decoding the files again")
    train, test = decode()
    save_cache({"key": key, "train": (train.images, train.labels), "test": (test.images, test.labels)}, cache)
    return train, test


def load_image_folder(root: str, download: bool, image_size: int, channels: int):
    samples = image_folder_samples(root)
    names = "\n".join(f"{os.path.relpath(path, root)} {label}" for split in samples for path, label in split)
    return cached_splits(os.path.join(root, f".rpe_bench_cache_{image_size}_{channels}.pt"), names,
                         lambda: tuple(decode_images(split, image_size, channels) for split in samples))


def image_folder_files(root: str, image_size: int, channels: int) -> tuple[ImageFiles, ImageFiles]:
    """The streaming loader's splits: the same samples in the same order, nothing decoded yet."""
    train, test = image_folder_samples(os.path.expanduser(root))
    return ImageFiles(train, image_size, channels), ImageFiles(test, image_size, channels)


LOADERS = {
    "mnist": mnist_loader(datasets.MNIST),
    "fashion_mnist": mnist_loader(datasets.FashionMNIST),
    "cifar10": cifar_loader(datasets.CIFAR10),
    "cifar100": cifar_loader(datasets.CIFAR100),
    "digits": load_digits,
    "image_folder": load_image_folder,
}


def load_splits(name: str, root: str, download: bool, image_size: int,
                channels: int) -> tuple[ImageTensors, ImageTensors]:
    """(train, test), each uint8 (N, channels, image_size, image_size) images and int64 labels, on the CPU."""
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}: available {sorted(LOADERS)}")
    if channels not in (1, 3):
        raise ValueError(f"channels={channels}: allowed 1 or 3")
    splits = LOADERS[name](os.path.expanduser(root), download, image_size, channels)
    return tuple(ImageTensors(conform(split.images, image_size, channels), split.labels) for split in splits)


def stratified_subset(labels: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """`count` indices (ascending) whose classes keep the split's proportions: a random order from a generator
    of `seed` alone, each index ranked by its place within its class over the class's size, the `count`
    smallest ranks kept. The same labels, count and seed give the same subset on every machine and run."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    shuffled = labels[order]
    classes, inverse, sizes = torch.unique(shuffled, return_inverse=True, return_counts=True)
    place = torch.zeros(len(labels), dtype=torch.float64)
    for index in range(len(classes)):  # rank within the class, in the random order
        members = (inverse == index).nonzero().squeeze(1)
        place[members] = torch.arange(len(members), dtype=torch.float64) / sizes[index]
    # Stable: ties (equal fractions of different classes) go by the random order.
    kept = torch.argsort(place, stable=True)[:count]
    return order[kept].sort().values


def split_subset(data, indices: torch.Tensor):
    """The samples at `indices` of a split held in memory (ImageTensors) or left on disk (ImageFiles and
    rpe_bench.video.ClipFiles)."""
    if isinstance(data, ImageTensors):
        return ImageTensors(data.images[indices], data.labels[indices])
    return dataclasses.replace(data, samples=[data.samples[index] for index in indices.tolist()])


def crop_and_flip(images: torch.Tensor, padding: int, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Per image: zero-pad, crop the original size at offsets (B, 2) (row, column), mirror where flips (B,); a
    clip's frames all alike.

    One gather for the whole batch: the flip reverses the column indices of the crop window."""
    if images.ndim == 5:
        return crop_and_flip(images.flatten(1, 2), padding, offsets, flips).view(images.shape)
    batch, channels, height, width = images.shape
    padded = F.pad(images, (padding,) * 4)
    rows = offsets[:, 0, None] + torch.arange(height, device=images.device)
    columns = torch.arange(width, device=images.device)
    columns = torch.where(flips[:, None], width - 1 - columns, columns) + offsets[:, 1, None]
    return padded[torch.arange(batch, device=images.device)[:, None, None, None],
                  torch.arange(channels, device=images.device)[None, :, None, None],
                  rows[:, None, :, None], columns[:, None, None, :]]


class BatchIterator:
    """Batches of (float32 normalised images, int64 labels) on `device`, built by indexing uint8 tensors.

    Under DDP give every process the same generator seed and its shard=(rank, world_size): it then takes its
    share of each batch of batch_size images, and all processes see the same number of batches."""

    def __init__(self, data: ImageTensors, batch_size: int, shuffle: bool, generator: Optional[torch.Generator],
                 device, mean: Sequence[float], std: Sequence[float], augment: Optional[Augment] = None,
                 drop_last: bool = False, limit_batches: Optional[int] = None, output_size: Optional[int] = None,
                 shard: tuple[int, int] = (0, 1)):
        self.device = torch.device(device)
        self.labels = data.labels.to(self.device, non_blocking=True)
        channels, pixel_axes = self.hold(data)
        if len(mean) not in (1, channels) or len(std) not in (1, channels):
            raise ValueError(f"mean {list(mean)} and std {list(std)} need 1 or {channels} values")
        # (x / 255 - mean) / std as one multiply-add, over (H, W) or a clip's (T, H, W).
        per_channel = (-1,) + (1,) * pixel_axes
        std = torch.tensor(std, dtype=torch.float32, device=self.device).view(per_channel)
        self.scale = 1 / (255 * std)
        self.shift = torch.tensor(mean, dtype=torch.float32, device=self.device).view(per_channel) / std
        self.batch_size, self.shuffle, self.generator = batch_size, shuffle, generator
        self.augment = augment if augment and (augment.random_crop_padding or augment.horizontal_flip) else None
        self.drop_last, self.limit_batches, self.output_size = drop_last, limit_batches, output_size
        self.rank, self.world_size = shard

    def hold(self, data: ImageTensors) -> tuple[int, int]:
        """Keeps the images on the device; returns their channels and pixel axes (2, or 3 for clips)."""
        self.images = data.images.to(self.device, non_blocking=True)
        return self.images.shape[1], self.images.ndim - 2

    def fetch(self, indices: list[torch.Tensor]):
        """The uint8 images of each batch's indices, on the device, batch by batch."""
        for index in indices:
            yield self.images[index]

    def __len__(self) -> int:
        # A last, partial batch is kept only when every process gets at least one image of it.
        count, remainder = divmod(len(self.labels), self.batch_size)
        count += not self.drop_last and remainder >= self.world_size
        return count if self.limit_batches is None else min(count, self.limit_batches)

    def random(self, draw, *args, **kwargs) -> torch.Tensor:
        """A draw from self.generator on its device, moved to the data's device."""
        device = self.generator.device if self.generator is not None else self.device
        return draw(*args, generator=self.generator, device=device, **kwargs).to(self.device, non_blocking=True)

    def __iter__(self):
        count = len(self.labels)
        order = self.random(torch.randperm, count) if self.shuffle else torch.arange(count, device=self.device)
        if self.augment:
            padding = self.augment.random_crop_padding
            offsets = self.random(torch.randint, 0, 2 * padding + 1, (count, 2))
            flips = (self.random(torch.randint, 0, 2, (count,)).bool() if self.augment.horizontal_flip
                     else torch.zeros(count, dtype=torch.bool, device=self.device))
        # Every process draws the same epoch and takes every world_size-th image of each batch.
        windows = [slice(start + self.rank, start + self.batch_size, self.world_size)
                   for start in range(0, len(self) * self.batch_size, self.batch_size)]
        indices = [order[window] for window in windows]
        for window, index, images in zip(windows, indices, self.fetch(indices)):
            if self.augment:
                images = crop_and_flip(images, padding, offsets[window], flips[window])
            images = images.float().mul_(self.scale).sub_(self.shift)
            if self.output_size is not None and images.shape[-1] != self.output_size:
                images = resize_batch(images, self.output_size)
            yield images, self.labels[index]


class StreamingBatchIterator(BatchIterator):
    """BatchIterator over an image folder left on disk (dataset.loader=stream): the same epoch plan from the same
    generator (order, crops, flips), so the same batches at a seed, but each batch's images are decoded by
    DataLoader worker processes while the step before it trains. Memory stays bounded by the batches in flight
    (workers x prefetch), whatever the folder's size."""

    def __init__(self, data: ImageFiles, *args, workers: int = 1, prefetch_batches: int = 4, **kwargs):
        self.workers, self.prefetch_batches = workers, prefetch_batches
        super().__init__(data, *args, **kwargs)

    def hold(self, data) -> tuple[int, int]:
        self.files = data  # ImageFiles, or rpe_bench.video.ClipFiles
        return data.channels, data.pixel_axes

    def fetch(self, indices: list[torch.Tensor]):
        loader = torch.utils.data.DataLoader(
            self.files, batch_sampler=[index.tolist() for index in indices], num_workers=self.workers,
            collate_fn=torch.stack, pin_memory=self.device.type == "cuda",
            prefetch_factor=self.prefetch_batches if self.workers else None)
        for images in loader:
            yield images.to(self.device, non_blocking=True)
