"""Clips: uint8 tensors (N, C, T, H, W) for the same BatchIterator that serves images.

  moving_mnist  clips drawn from the real MNIST digits (train clips from train digits, test clips from test
                digits) by a generator of fixed seed (dataset.moving.generator_seed): one digit per clip moving
                on a straight line from a start to an end point. The label is the digit and the direction of
                its horizontal motion, 2 * digit + (1 if it moves right): the order of the frames is half the
                answer. Every clip has a twin with the same frames in reverse order and the other direction, and
                both are equally likely, so a model that cannot tell the frames' order (no positions, one-frame
                tubelets) is at chance on the direction.
  video_folder  root/train/<class>/<clip>/<frame>.jpg (the usual extracted UCF101 layout), and test/ alike;
                T frames sampled evenly over each clip (first to last), decoded once and cached like
                image_folder, or streamed clip by clip (dataset.loader=stream).

A longer clip of the same scene (time extrapolation) samples more frames over the same span: moving_mnist draws
the same lines and samples them at more points; video_folder samples more of each clip's frames.
"""
import os
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

from rpe_bench.data import (LOADERS, ROOT_HINT, DatasetError, DatasetNotFoundError, ImageFiles, ImageTensors,
                            cached_splits, decode_image_file, resize_batch)

DIRECTIONS = 2  # left, right


@dataclass(frozen=True)
class MovingLines:
    """Each clip's digit and straight line, drawn once, so clips of any length show the same scenes."""
    digits: torch.Tensor  # int64 (N,): index into the split's digits
    starts: torch.Tensor  # int64 (N, 2): top-left corner (row, column) in the first frame
    ends: torch.Tensor  # int64 (N, 2): in the last frame
    rightwards: torch.Tensor  # int64 (N,): 1 where the digit moves right

    def positions(self, frames: int) -> torch.Tensor:
        """(N, frames, 2) top-left corners, evenly spaced from start to end, rounded to pixels."""
        fraction = torch.linspace(0, 1, frames, dtype=torch.float64) if frames > 1 else torch.zeros(1,
                                                                                                    dtype=torch.float64)
        path = self.starts[:, None].double() + (self.ends - self.starts)[:, None].double() * fraction[None, :, None]
        return path.round().long()


def draw_lines(count: int, available_digits: int, canvas: int, digit_size: int, min_travel: int,
               generator: torch.Generator) -> MovingLines:
    """Endpoints a < b in x at least min_travel apart, free rows, and a fair coin for the direction: the leftward
    clip is the rightward one played backwards."""
    room = canvas - digit_size
    digits = torch.randint(available_digits, (count,), generator=generator)
    left = torch.randint(room - min_travel + 1, (count,), generator=generator)
    right = left + min_travel + (torch.rand(count, generator=generator, dtype=torch.float64)
                                 * (room - left - min_travel + 1)).floor().long()
    rows = torch.randint(room + 1, (count, 2), generator=generator)
    rightwards = torch.randint(DIRECTIONS, (count,), generator=generator)
    first = torch.stack([rows[:, 0], left], dim=1)
    last = torch.stack([rows[:, 1], right], dim=1)
    forward = rightwards[:, None].bool()
    return MovingLines(digits, torch.where(forward, first, last), torch.where(forward, last, first), rightwards)


def render_clips(digits: torch.Tensor, lines: MovingLines, frames: int, canvas: int) -> torch.Tensor:
    """uint8 (N, 1, frames, canvas, canvas): each clip's digit (uint8 (M, size, size)) pasted on black."""
    count, size = len(lines.digits), digits.shape[-1]
    positions = lines.positions(frames)
    offsets = torch.arange(size)
    rows = positions[..., 0, None, None] + offsets[:, None]  # (N, T, size, 1)
    columns = positions[..., 1, None, None] + offsets[None, :]  # (N, T, 1, size)
    clips = torch.zeros(count, frames, canvas, canvas, dtype=torch.uint8)
    clips[torch.arange(count)[:, None, None, None], torch.arange(frames)[None, :, None, None], rows, columns] = \
        digits[lines.digits][:, None]
    return clips.unsqueeze(1)


def split_generator(seed: int, split: str) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, split == "test"]).generate_state(1)[0]))


def load_moving_mnist(dataset, frames: int) -> tuple[ImageTensors, ImageTensors]:
    moving = dataset.moving
    digit_splits = LOADERS["mnist"](os.path.expanduser(dataset.root), dataset.download, 28, 1)
    clips = []
    for split, digits, count in (("train", digit_splits[0], moving.train_clips),
                                 ("test", digit_splits[1], moving.test_clips)):
        small = resize_batch(digits.images.float(), moving.digit_size).round().clamp(0, 255).to(torch.uint8)
        lines = draw_lines(count, len(digits), dataset.image_size, moving.digit_size, moving.min_travel,
                           split_generator(moving.generator_seed, split))
        labels = DIRECTIONS * digits.labels[lines.digits] + lines.rightwards
        clips.append(ImageTensors(render_clips(small[:, 0], lines, frames, dataset.image_size), labels))
    return clips[0], clips[1]


def evenly_spaced(available: int, frames: int) -> list[int]:
    """`frames` indices from first to last of `available` frames (repeating some when there are fewer)."""
    return torch.linspace(0, available - 1, frames, dtype=torch.float64).round().long().tolist()


def clip_frame_files(clip: str) -> list[str]:
    files = sorted(name for name in os.listdir(clip) if name.lower().endswith(IMG_EXTENSIONS))
    if not files:
        raise DatasetError(f"clip {clip} holds no frames (expected image files such as 000001.jpg): add its "
                           f"frames, or move it out of the folder")
    return [os.path.join(clip, name) for name in files]


def video_folder_samples(root: str) -> list[list]:
    """(clip folder, label) of every clip in root/train/<class>/<clip>/ and root/test/..., labels by sorted class
    name (as image_folder)."""
    try:
        _, class_to_index = find_classes(os.path.join(root, "train"))
        samples = []
        for split in ("train", "test"):
            split_root = os.path.join(root, split)
            samples.append([(os.path.join(split_root, label, clip), index)
                            for label, index in sorted(class_to_index.items())
                            if os.path.isdir(os.path.join(split_root, label))
                            for clip in sorted(os.listdir(os.path.join(split_root, label)))
                            if os.path.isdir(os.path.join(split_root, label, clip))])
            if not samples[-1]:
                raise FileNotFoundError(f"no clip folders under {split_root}")
        return samples
    except FileNotFoundError as error:
        raise DatasetNotFoundError(
            f"video_folder not found in {root} (expected train/<class>/<clip>/ and test/<class>/<clip>/ holding "
            f"frame images): {' '.join(str(error).split())}. {ROOT_HINT}") from error


def decode_clip(clip: str, frames: int, image_size: int, channels: int) -> np.ndarray:
    """uint8 (channels, frames, image_size, image_size): T frames sampled evenly, each decoded as image_folder's
    images are (one decoder for both loaders)."""
    files = clip_frame_files(clip)
    pixels = [decode_image_file(files[index], image_size, channels) for index in evenly_spaced(len(files), frames)]
    return np.stack(pixels).transpose(3, 0, 1, 2)


@dataclass
class ClipFiles(ImageFiles):
    """A split of a video folder left on disk: each clip decoded when a batch asks for it."""
    frames: int  # samples are (clip folder, label)
    pixel_axes = 3

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(decode_clip(self.samples[index][0], self.frames, self.image_size, self.channels))


def load_video_folder(dataset, frames: int) -> tuple[ImageTensors, ImageTensors]:
    root = os.path.expanduser(dataset.root)
    samples = video_folder_samples(root)
    names = "\n".join(f"{os.path.relpath(path, root)} {label} {len(os.listdir(path))}"
                      for split in samples for path, label in split)

    def decode() -> tuple[ImageTensors, ImageTensors]:
        clips = [ClipFiles(split, dataset.image_size, dataset.channels, frames) for split in samples]
        return tuple(ImageTensors(torch.stack([split[index] for index in range(len(split))]), split.labels)
                     for split in clips)

    cache = os.path.join(root, f".rpe_bench_cache_clips_{frames}_{dataset.image_size}_{dataset.channels}.pt")
    return cached_splits(cache, names, decode)


def video_folder_files(dataset, frames: int) -> tuple[ClipFiles, ClipFiles]:
    """The streaming loader's splits: the same clips in the same order, nothing decoded yet."""
    train, test = video_folder_samples(os.path.expanduser(dataset.root))
    return (ClipFiles(train, dataset.image_size, dataset.channels, frames),
            ClipFiles(test, dataset.image_size, dataset.channels, frames))


CLIP_LOADERS = {"moving_mnist": load_moving_mnist, "video_folder": load_video_folder}
