"""A dataset config -> its (train, test) splits: images or clips, held in memory or left on disk to stream."""
from typing import Optional

from rpe_bench.data import image_folder_files, load_splits
from rpe_bench.video import CLIP_LOADERS, video_folder_files


def load_dataset(dataset, loader: str, frames: Optional[int] = None):
    """(train, test) for `loader` ("memory" or "stream", rpe_bench.launching.loader_choice); clips get `frames`
    frames, dataset.frames unless given (time extrapolation asks for more)."""
    frames = frames or dataset.get("frames")
    if frames is not None:
        if dataset.name not in CLIP_LOADERS:
            raise ValueError(f"dataset={dataset.name} holds images, not clips: clip datasets are "
                             f"{', '.join(sorted(CLIP_LOADERS))}")
        if loader == "stream":
            return video_folder_files(dataset, frames)
        return CLIP_LOADERS[dataset.name](dataset, frames)
    if loader == "stream":
        return image_folder_files(dataset.root, dataset.image_size, dataset.channels)
    return load_splits(dataset.name, dataset.root, dataset.download, dataset.image_size, dataset.channels)
