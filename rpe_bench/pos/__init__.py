"""Position encodings for attention: a registry mapping a config name to a `PositionEncoding` class.

A new encoding is one module in this package whose class carries `@register("name")`; importing the package
imports every module here, so nothing else needs editing. Options are the constructor's keyword arguments
beyond `head_dim` and `num_heads`, and `build` refuses any it does not know.
"""
import importlib
import inspect
import pkgutil
from typing import Callable, Dict, List, Type

from rpe_bench.pos.base import PositionEncoding

_ENCODINGS: Dict[str, Type[PositionEncoding]] = {}
_SHAPE_ARGUMENTS = ("head_dim", "num_heads")


def register(name: str) -> Callable[[Type[PositionEncoding]], Type[PositionEncoding]]:
    def add(encoding: Type[PositionEncoding]) -> Type[PositionEncoding]:
        if name in _ENCODINGS:
            raise ValueError(f"position encoding {name!r} is registered twice")
        _ENCODINGS[name] = encoding
        return encoding

    return add


def available() -> List[str]:
    return sorted(_ENCODINGS)


def build(name: str, head_dim: int, num_heads: int, **options) -> PositionEncoding:
    if name not in _ENCODINGS:
        raise ValueError(f"unknown position encoding {name!r}; available: {', '.join(available())}")
    encoding = _ENCODINGS[name]
    parameters = {parameter.name: parameter for parameter in inspect.signature(encoding).parameters.values()
                  if parameter.name not in _SHAPE_ARGUMENTS}
    for option in options:
        if option not in parameters:
            raise ValueError(f"unknown option {option!r} for position encoding {name!r}; "
                             f"allowed: {', '.join(parameters) or 'none'}")
    for option, parameter in parameters.items():
        if parameter.default is inspect.Parameter.empty and option not in options:
            raise ValueError(f"position encoding {name!r} needs option {option!r}")
    return encoding(head_dim=head_dim, num_heads=num_heads, **options)


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
