"""Tiny datasets written in their real on-disk formats (IDX, CIFAR pickles, image folders), for the loaders'
tests and for runs that read a dataset the way torchvision does."""
import pickle
import struct

import numpy as np
import torch
from PIL import Image

MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def random_images(count, channels, size, seed):
    return torch.randint(0, 256, (count, channels, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def write_idx(path, array: np.ndarray):
    """IDX: two zero bytes, type 0x08 (uint8), the number of dimensions, then each size as big-endian uint32."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root, folder="MNIST"):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    splits = {"train": (random_images(6, 1, 28, 0), torch.arange(6) % 10),
              "t10k": (random_images(4, 1, 28, 1), torch.tensor([9, 0, 3, 3]))}
    for prefix, (images, labels) in splits.items():
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images[:, 0].numpy())
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels.numpy())
    return splits["train"], splits["t10k"]


def write_pickle(path, payload):
    with open(path, "wb") as handle:
        pickle.dump(payload, handle)


def write_cifar10(root):
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    train = (random_images(10, 3, 32, 2), torch.arange(10))
    for batch in range(5):  # rows are flattened (C, H, W), as in the real files
        rows = slice(2 * batch, 2 * batch + 2)
        write_pickle(folder / f"data_batch_{batch + 1}",
                     {"data": train[0][rows].reshape(2, -1).numpy(), "labels": train[1][rows].tolist()})
    test = (random_images(3, 3, 32, 3), torch.tensor([4, 4, 7]))
    write_pickle(folder / "test_batch", {"data": test[0].reshape(3, -1).numpy(), "labels": test[1].tolist()})
    write_pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)]})
    return train, test


def write_cifar100(root):
    folder = root / "cifar-100-python"
    folder.mkdir()
    splits = {"train": (random_images(5, 3, 32, 4), torch.tensor([0, 99, 50, 1, 2])),
              "test": (random_images(2, 3, 32, 5), torch.tensor([98, 3]))}
    for name, (images, labels) in splits.items():
        write_pickle(folder / name, {"data": images.reshape(len(labels), -1).numpy(), "fine_labels": labels.tolist(),
                                     "coarse_labels": (labels // 5).tolist()})
    write_pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                                   "coarse_label_names": [f"c{i}" for i in range(20)]})
    return splits["train"], splits["test"]


def save_image(image, path):
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)


def write_image_folder(root):
    """Lossless PNGs in train/<class>/ and test/<class>/ (labels follow sorted class names), plus one JPEG."""
    splits = {"train": (random_images(4, 3, 8, 6), torch.tensor([0, 0, 1, 1])),
              "test": (random_images(2, 3, 8, 7), torch.tensor([0, 1]))}
    for split, (images, labels) in splits.items():
        for index, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / ["cat", "dog"][label]
            folder.mkdir(parents=True, exist_ok=True)
            save_image(image, folder / f"{index}.png")
    return splits["train"], splits["test"]


def write_digits_folder(root, image_size=8):
    """scikit-learn's digits (real data) as an image folder of JPEGs, in load_digits' train/test split."""
    from rpe_bench.data import load_splits
    splits = load_splits("digits", "unused", download=False, image_size=image_size, channels=1)
    for split, data in zip(("train", "test"), splits):
        for index, (image, label) in enumerate(zip(data.images, data.labels)):
            folder = root / split / f"digit{int(label)}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[0].numpy()).save(folder / f"{index:04d}.jpg", quality=90)
    return root
