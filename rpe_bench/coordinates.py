"""Where the tokens sit for the rotary encodings (`pos.coordinates`), and DINOv3's train-time coordinate
augmentation (`pos.coordinate_augmentation`).

Units are the training grid's patch spacing under both conventions, so at the training resolution they give
identical coordinates (and identical models), and the frequencies every encoding starts from keep their meaning.
"""
import math
from typing import Optional, Sequence

import torch
from torch import nn


def axis_positions(size: int, training_size: Optional[int], device=None, fraction: bool = False) -> torch.Tensor:
    """One axis's positions (see patch_coordinates): indices, their place in the training span, or (fraction)
    the patch centres' place in the image, (i + 1/2) / size."""
    index = torch.arange(size, device=device, dtype=torch.float32)
    if fraction:
        return (index + 0.5) / size
    return index if training_size is None else (index + 0.5) * (training_size / size) - 0.5


def grid_coordinates(grid: Sequence[int], training_grid: Optional[Sequence[int]] = None,
                     device=None, fraction: bool = False) -> torch.Tensor:
    """(1 + prod(grid), D) positions of a token grid (height, width) or (frames, height, width), the CLS token
    first at the origin, then the tokens in row-major order; columns (x, y) for images and (t, x, y) for clips.
    `training_grid`: the grid of the same rank the model trained on, under `normalized` (see patch_coordinates);
    `fraction`: in fractions of the image (and of the clip's length) instead of patches."""
    training_grid = training_grid or (None,) * len(grid)
    axes = torch.meshgrid(*(axis_positions(size, trained, device, fraction)
                            for size, trained in zip(grid, training_grid)), indexing="ij")
    *leading, ys, xs = (axis.flatten() for axis in axes)
    tokens = torch.stack([*leading, xs, ys], dim=1)
    return torch.cat([tokens.new_zeros(1, len(grid)), tokens])


def patch_coordinates(grid_height: int, grid_width: int, training_grid: Optional[int] = None,
                      device=None) -> torch.Tensor:
    """(1 + H*W, 2) float (x, y) positions: the CLS token first, at the origin, where every rotation is the
    identity (RoPE-ViT leaves CLS unrotated), then the patches in row-major order.

    Without `training_grid` ("grid"): integer patch indices, so a larger image places patches beyond the trained
    range (extrapolation). With it ("normalized"): each patch centre's place in the image, measured in patches of
    the training grid G, the first training patch at 0: x = (i + 1/2) G / W - 1/2 on a grid W wide. At W = G this
    is i exactly; a larger image gets spacing G / W inside the trained span [-1/2, G - 1/2] (interpolation).
    Clips (grid_coordinates) add time as a first axis with the same two conventions, in tubelets."""
    training = None if training_grid is None else (training_grid, training_grid)
    return grid_coordinates((grid_height, grid_width), training, device)


def flat_coordinates(*grid: int, device=None) -> torch.Tensor:
    """(1 + tokens, 1) float positions with one axis ("flat"): CLS at 0, then each token's row-major index over
    the grid (height, width) or (frames, height, width), as the reference notebook encoded patches. A larger
    grid's tokens continue the index past the trained range."""
    index = torch.arange(math.prod(grid), device=device, dtype=torch.float32)
    return torch.cat([index.new_zeros(1), index])[:, None]


def log_uniform(count: int, limit: float, generator: torch.Generator) -> torch.Tensor:
    """`count` factors with log uniform in [-log limit, log limit]."""
    return ((2 * torch.rand(count, generator=generator) - 1) * math.log(limit)).exp()


class CoordinateAugmentation(nn.Module):
    """DINOv3's train-time augmentation of the patch coordinates, one draw per training step shared by the batch
    and every layer. In DINOv3's frame, where the training image spans [-1, 1] on each axis, c -> (c + offset) *
    scale with the offset uniform in [-shift, shift] per axis and the scale log-uniform in [1/jitter, jitter]
    per axis times one log-uniform factor in [1/rescale, rescale]; null turns a part off. CLS stays at the
    origin, so it keeps the identity rotation.

    The draws come from `generator` alone (the model derives it from the run seed), so they never shift the
    global RNG that draws the shared weights and batches; its state is saved with the model's state_dict, so a
    resumed run continues the same sequence."""

    def __init__(self, shift: Optional[float], jitter: Optional[float], rescale: Optional[float],
                 generator: torch.Generator):
        super().__init__()
        for name, value, least in (("shift", shift, 0.0), ("jitter", jitter, 1.0), ("rescale", rescale, 1.0)):
            if value is not None and value < least:
                raise ValueError(f"pos.coordinate_augmentation.{name}={value} must be >= {least}, or null (off)")
        self.shift, self.jitter, self.rescale = shift, jitter, rescale
        self.generator = generator

    def draw(self, device: torch.device) -> torch.Tensor:
        """One training step's draw (offset x, offset y, scale x, scale y), made on the host from the own
        generator, so every device sees the same draws at a seed (common random numbers), and moved to `device`
        without making the host wait. Drawn outside the forward pass, so a compiled model stays one graph."""
        offset, scale = torch.zeros(2), torch.ones(2)
        if self.shift is not None:
            offset = (2 * torch.rand(2, generator=self.generator) - 1) * self.shift
        if self.jitter is not None:
            scale = scale * log_uniform(2, self.jitter, self.generator)
        if self.rescale is not None:
            scale = scale * log_uniform(1, self.rescale, self.generator)
        drawn = torch.cat([offset, scale])
        if torch.device(device).type == "cuda":
            drawn = drawn.pin_memory()  # a copy from pageable memory would wait for the device
        return drawn.to(device, non_blocking=True)

    def forward(self, coords: torch.Tensor, training_grid: int, drawn: torch.Tensor) -> torch.Tensor:
        """`coords` moved by one `draw`."""
        offset, scale = drawn[:2].to(coords.dtype), drawn[2:].to(coords.dtype)
        # Patch units u and DINOv3's frame c: c = (u - centre) / half_span.
        centre, half_span = (training_grid - 1) / 2, training_grid / 2
        patches = centre + (coords[1:] - centre + offset * half_span) * scale
        return torch.cat([coords[:1], patches])

    def get_extra_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state.cpu())  # a checkpoint loaded onto a GPU moved the state there


def cls_at_centre(coords: torch.Tensor) -> torch.Tensor:
    """CLS moved from the origin to the centre of the patches' positions on each axis (ComRoPE's placement:
    0.5 in fractions of the image), where it is rotated like a patch would be."""
    patches = coords[1:]
    centre = (patches.amin(dim=0) + patches.amax(dim=0)) / 2
    return torch.cat([centre[None], patches])
