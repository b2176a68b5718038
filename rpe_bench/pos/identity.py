"""No relative encoding in attention. `ape` differs from `none` only in the model, which adds its learned
absolute table to the patch tokens (conf/pos/ape.yaml sets absolute_table), so one class serves both."""
from rpe_bench.pos import register
from rpe_bench.pos.base import PositionEncoding


@register("none")
@register("ape")
class NoRelativeEncoding(PositionEncoding):
    pass
