"""No relative encoding in attention. `ape` differs from `none` only in the model, which adds its learned
absolute table to the patch tokens (conf/pos/ape.yaml sets absolute_table)."""
from rpe_bench.pos import register
from rpe_bench.pos.base import PositionEncoding


@register("none")
class NoRelativeEncoding(PositionEncoding):
    supported_axes = None  # positions are never read


@register("ape")
class AbsoluteTableOnly(NoRelativeEncoding):
    # The model's table follows the tokens over the 2D grid, a clip's (t, x, y) grid or the flat index, and is
    # interpolated over those axes at other sizes (VisionTransformer.absolute_positions).
    supported_axes = (1, 2, 3)
