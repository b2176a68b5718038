"""A small pre-norm Vision Transformer whose attention hands q and k to a position-encoding module."""
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rpe_bench import pos as position_encodings
from rpe_bench.config import ClsPosition, Coordinates, position_axes
from rpe_bench.coordinates import CoordinateAugmentation, cls_at_centre, flat_coordinates, grid_coordinates
from rpe_bench.numerics import autocast_off
from rpe_bench.pos.base import PositionEncoding


@dataclass
class VitShape:
    image_size: int
    patch_size: int
    channels: int
    num_classes: int
    emb_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    frames: Optional[int] = None  # clips (B, C, frames, H, W); None: images (B, C, H, W)
    tubelet_frames: int = 1  # a clip's patches are tubelet_frames x patch_size x patch_size

    @property
    def token_grid(self) -> tuple[int, ...]:
        """The patch grid at training size: (height, width), or (tubelets, height, width) for clips."""
        side = self.image_size // self.patch_size
        return (side, side) if self.frames is None else (self.frames // self.tubelet_frames, side, side)


ABSOLUTE_TABLE_LAYER = -1  # the APE table feeds the first block: its draws get a stream of their own
COORDINATE_AUGMENTATION_LAYER = -2  # the coordinate augmentation's draws, one per training step: their own stream


def encoding_generator(seed: Optional[int], layer: int) -> Optional[torch.Generator]:
    """The generator of one layer's encoding-specific draws (a sparse mask, reflection vectors, mixed angles; the
    APE table at ABSOLUTE_TABLE_LAYER). Common random numbers: a stream of their own, derived from (seed, layer)
    alone, never shifts the global RNG that draws the weights every encoding shares, so at one seed all
    encodings start from the same shared weights and their per-seed differences pair. None without a seed: the
    draws then come from the global RNG and shift the shared weights."""
    if seed is None:
        return None
    # SeedSequence hashes the pair, so neighbouring seeds and layers get unrelated streams. It takes non-negative
    # words: a negative number enters as its 64-bit two's complement, as torch.manual_seed takes negative seeds.
    words = [value % 2**64 for value in (seed, layer)]
    return torch.Generator().manual_seed(int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0]))


def fold_basis(weight: torch.Tensor, bias: torch.Tensor, basis: torch.Tensor):
    """W_q' = blockdiag_h(P_h) W_q and the same for W_k (bias too), in a fused qkv projection.

    STRING applies P to q and k before the rotation; folding it into the projection keeps the per-token cost
    equal to RoPE's, and gradients still reach P's parameters through this product. The product runs in the
    weights' precision with autocast off: under bf16 autocast it would leave the effective P about 5e-3 from
    orthogonal; the projection that follows casts the folded weights to bf16 once."""
    heads, head_dim, _ = basis.shape
    emb_dim = weight.shape[1]
    qk_weight = weight[: 2 * emb_dim].view(2, heads, head_dim, emb_dim)
    qk_bias = bias[: 2 * emb_dim].view(2, heads, head_dim)
    basis = basis.to(weight.dtype)
    with autocast_off(weight.device.type):
        folded_weight = torch.einsum("hij,shjc->shic", basis, qk_weight).reshape(2 * emb_dim, emb_dim)
        folded_bias = torch.einsum("hij,shj->shi", basis, qk_bias).reshape(2 * emb_dim)
    return torch.cat([folded_weight, weight[2 * emb_dim:]]), torch.cat([folded_bias, bias[2 * emb_dim:]])


class Attention(nn.Module):
    def __init__(self, emb_dim: int, num_heads: int, position: PositionEncoding):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(emb_dim, 3 * emb_dim)
        self.proj = nn.Linear(emb_dim, emb_dim)
        self.position = position

    def forward(self, x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        batch, tokens, emb_dim = x.shape
        weight, bias = self.qkv.weight, self.qkv.bias
        basis = self.position.projection_basis()
        if basis is not None:
            weight, bias = fold_basis(weight, bias, basis)
        qkv = F.linear(x, weight, bias).view(batch, tokens, 3, self.num_heads, emb_dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.position.rotate(q, k, coords)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, emb_dim))


class Block(nn.Module):
    def __init__(self, shape: VitShape, position: PositionEncoding):
        super().__init__()
        hidden = int(shape.emb_dim * shape.mlp_ratio)
        self.norm1 = nn.LayerNorm(shape.emb_dim)
        self.attention = Attention(shape.emb_dim, shape.num_heads, position)
        self.norm2 = nn.LayerNorm(shape.emb_dim)
        self.mlp = nn.Sequential(nn.Linear(shape.emb_dim, hidden), nn.GELU(), nn.Dropout(shape.dropout),
                                 nn.Linear(hidden, shape.emb_dim), nn.Dropout(shape.dropout))

    def forward(self, x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), coords)
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """`seed` is the run's seed, from which each layer's encoding-specific draws are derived (encoding_generator);
    the caller seeds the global RNG, which draws the shared weights."""

    def __init__(self, shape: VitShape, encoding: str, encoding_options: Dict[str, Any] | None = None,
                 absolute_table: bool = False, seed: Optional[int] = None,
                 coordinates: Coordinates = Coordinates.grid,
                 coordinate_augmentation: Optional[CoordinateAugmentation] = None,
                 cls_position: ClsPosition = ClsPosition.origin):
        super().__init__()
        self.shape = shape
        self.grid_size = shape.image_size // shape.patch_size
        self.coordinates = Coordinates(coordinates)
        self.cls_position = ClsPosition(cls_position)
        self.coordinate_augmentation = coordinate_augmentation
        head_dim = shape.emb_dim // shape.num_heads
        if shape.frames is None:
            self.patch_embedding = nn.Conv2d(shape.channels, shape.emb_dim, shape.patch_size, shape.patch_size)
        else:
            tubelet = (shape.tubelet_frames, shape.patch_size, shape.patch_size)
            self.patch_embedding = nn.Conv3d(shape.channels, shape.emb_dim, tubelet, tubelet)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, shape.emb_dim))
        self.absolute_table = (nn.Parameter(torch.zeros(1, math.prod(shape.token_grid), shape.emb_dim))
                               if absolute_table else None)
        self.blocks = nn.ModuleList(
            Block(shape, position_encodings.build(encoding, head_dim=head_dim, num_heads=shape.num_heads,
                                                  generator=encoding_generator(seed, layer),
                                                  axes=position_axes(self.coordinates, shape.frames),
                                                  **(encoding_options or {})))
            for layer in range(shape.depth))
        self.norm = nn.LayerNorm(shape.emb_dim)
        self.head = nn.Linear(shape.emb_dim, shape.num_classes)
        self._init_weights(encoding_generator(seed, ABSOLUTE_TABLE_LAYER))

    def _init_weights(self, table_generator: Optional[torch.Generator]) -> None:
        """PyTorch's default init for the projections: timm's std-0.02 init suits long schedules, but it trains
        visibly slower in the reference notebook's two-epoch runs, which this project must reproduce."""
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.absolute_table is not None:
            nn.init.trunc_normal_(self.absolute_table, std=0.02, generator=table_generator)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def absolute_positions(self, *grid: int) -> torch.Tensor:
        """The APE table on this token grid, (height, width) or (tubelets, height, width), interpolated over the
        positions' axes where it differs from the training grid, so the model can be evaluated at other
        resolutions and clip lengths: bicubic over an image's 2D grid (as timm), trilinear over a clip's 3D
        grid, or linear over the flat token index under `flat`."""
        table, training_grid = self.absolute_table, self.shape.token_grid
        if tuple(grid) == training_grid:
            return table
        if self.coordinates is Coordinates.flat:
            line = F.interpolate(table.transpose(1, 2), size=math.prod(grid), mode="linear", align_corners=False)
            return line.transpose(1, 2)
        mode = "bicubic" if len(grid) == 2 else "trilinear"
        spread = table.reshape(1, *training_grid, -1).movedim(-1, 1)
        spread = F.interpolate(spread, size=tuple(grid), mode=mode, align_corners=False)
        return spread.flatten(2).transpose(1, 2)

    def draw_coordinate_augmentation(self, device) -> Optional[torch.Tensor]:
        """The next training step's coordinate augmentation on `device`, or None (none configured, or eval
        mode). The training step draws it and passes it to forward: drawn inside, it would split a compiled
        graph."""
        if not (self.training and self.coordinate_augmentation is not None):
            return None
        return self.coordinate_augmentation.draw(device)

    def token_coordinates(self, *grid: int, device=None,
                          coordinate_draw: Optional[torch.Tensor] = None) -> torch.Tensor:
        """CLS and token positions for the encodings under `pos.coordinates` (rpe_bench.coordinates) on the token
        grid (height, width) or (tubelets, height, width), relative to the training grid; augmented in training
        mode only, by `coordinate_draw` or else a draw made here."""
        if self.coordinates is Coordinates.flat:
            coords = flat_coordinates(*grid, device=device)
        else:
            training_grid = self.shape.token_grid if self.coordinates is Coordinates.normalized else None
            coords = grid_coordinates(grid, training_grid, device=device,
                                      fraction=self.coordinates is Coordinates.fraction)
        # The augmentation moves (x, y) in training-grid units (flat positions are refused it by the config).
        if self.training and self.coordinate_augmentation is not None and coords.shape[1] == 2:
            if coordinate_draw is None:
                coordinate_draw = self.coordinate_augmentation.draw(coords.device)
            coords = self.coordinate_augmentation(coords, self.grid_size, coordinate_draw)
        return cls_at_centre(coords) if self.cls_position is ClsPosition.centre else coords

    def forward_features(self, images: torch.Tensor, coordinate_draw: Optional[torch.Tensor] = None) -> torch.Tensor:
        patches = self.patch_embedding(images)
        grid = tuple(patches.shape[2:])
        x = patches.flatten(2).transpose(1, 2)
        if self.absolute_table is not None:
            x = x + self.absolute_positions(*grid)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        coords = self.token_coordinates(*grid, device=images.device, coordinate_draw=coordinate_draw)
        for block in self.blocks:
            x = block(x, coords)
        return self.norm(x[:, 0])

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, images: torch.Tensor, coordinate_draw: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(images, coordinate_draw))

    @torch.no_grad()
    def fold_position_bases_(self) -> None:
        """Bake every STRING basis P into W_q / W_k once, for inference: afterwards each layer runs plain
        RoPE(-Mixed) and the logits are unchanged."""
        for block in self.blocks:
            attention = block.attention
            basis = attention.position.projection_basis()
            if basis is None:
                continue
            weight, bias = fold_basis(attention.qkv.weight, attention.qkv.bias, basis)
            attention.qkv.weight.copy_(weight)
            attention.qkv.bias.copy_(bias)
            attention.position.fold_basis_()


def parameter_groups(model: nn.Module, weight_decay: float):
    """AdamW groups: biases, norms, tokens, position tables and every position encoding's learnable
    frequencies or generators are excluded from weight decay (decaying a generator pulls P towards I)."""
    no_decay = {"cls_token", "absolute_table"}
    for module_name, module in model.named_modules():
        if isinstance(module, PositionEncoding):
            no_decay |= {f"{module_name}.{name}" for name in module.no_weight_decay()}
    decay, keep = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (keep if parameter.ndim < 2 or name in no_decay else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def build_model(cfg) -> VisionTransformer:
    shape = VitShape(image_size=cfg.dataset.image_size, patch_size=cfg.model.patch_size,
                     channels=cfg.dataset.channels, num_classes=cfg.dataset.num_classes,
                     emb_dim=cfg.model.emb_dim, depth=cfg.model.depth, num_heads=cfg.model.num_heads,
                     mlp_ratio=cfg.model.mlp_ratio, dropout=cfg.model.dropout, frames=cfg.dataset.frames,
                     tubelet_frames=cfg.dataset.tubelet_frames)
    augmentation = cfg.pos.coordinate_augmentation
    coordinate_augmentation = (
        CoordinateAugmentation(augmentation.shift, augmentation.jitter, augmentation.rescale,
                               generator=encoding_generator(cfg.seed, COORDINATE_AUGMENTATION_LAYER))
        if any(value is not None for value in augmentation.values()) else None)
    return VisionTransformer(shape, cfg.pos.name, dict(cfg.pos.options), absolute_table=cfg.pos.absolute_table,
                             seed=cfg.seed, coordinates=cfg.pos.coordinates,
                             coordinate_augmentation=coordinate_augmentation,
                             cls_position=cfg.pos.get("cls_position", ClsPosition.origin))
