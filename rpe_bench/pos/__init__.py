"""Position encodings for attention: a registry mapping a config name to a `PositionEncoding` class.

A new encoding is one module in this package whose class carries `@register("name")`; importing the package
imports every module here, so nothing else needs editing. Options are the constructor's keyword arguments
beyond `head_dim`, `num_heads` and `generator`; `build` refuses any it does not know and any value whose type
does not match the constructor's annotation. An option's default is written once: in conf/pos/<name>.yaml when
the encoding has one (what runs use and record), else in the constructor's signature.

`generator` is supplied by the model, not by the user: an encoding that draws random numbers at init (a sparse
mask, reflection vectors, mixed angles) declares `generator: Optional[torch.Generator] = None` and draws from it,
so its draws never shift the global RNG that draws the weights every encoding shares (common random numbers
across encodings at one seed). Without a generator it draws from the global RNG.
"""
import functools
import importlib
import inspect
import pkgutil
import types
import typing
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Type

import torch
from omegaconf import OmegaConf

from rpe_bench.pos.base import PositionEncoding

_ENCODINGS: Dict[str, Type[PositionEncoding]] = {}
_SHAPE_ARGUMENTS = ("head_dim", "num_heads", "generator", "axes")


def register(name: str) -> Callable[[Type[PositionEncoding]], Type[PositionEncoding]]:
    def add(encoding: Type[PositionEncoding]) -> Type[PositionEncoding]:
        if name in _ENCODINGS:
            raise ValueError(f"position encoding {name!r} is registered twice")
        _ENCODINGS[name] = encoding
        return encoding

    return add


def available() -> List[str]:
    return sorted(_ENCODINGS)


def encoding_type(name: str) -> Type[PositionEncoding]:
    """The class registered as `name`, with what it declares (relative, starts_as_rope, folds)."""
    if name not in _ENCODINGS:
        raise ValueError(f"unknown position encoding {name!r}; available: {', '.join(available())}")
    return _ENCODINGS[name]


def _allowed_types(annotation) -> tuple:
    """The runtime types an option annotated `annotation` accepts; an int is a valid float, a bool is no int."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(allowed for member in typing.get_args(annotation) for allowed in _allowed_types(member))
    if annotation is float:
        return (float, int)
    return (type(None),) if annotation is type(None) else (annotation,)


def _check_option_type(name: str, option: str, value, annotation) -> None:
    if annotation is None:
        return
    allowed = _allowed_types(annotation)
    if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
        expected = " or ".join("null" if kind is type(None) else kind.__name__ for kind in allowed
                               if not (kind is int and float in allowed))
        raise ValueError(f"option {option}={value!r} of position encoding {name!r} has the wrong type: "
                         f"expected {expected}")


CONF_POS_DIR = Path(__file__).resolve().parents[2] / "conf" / "pos"


@functools.lru_cache(maxsize=None)
def configured_defaults(name: str) -> Dict[str, Any]:
    """The options conf/pos/<name>.yaml sets to a value (not an interpolation such as cayley_sparse's
    `f: ${sparsity.f}`): the one place their defaults are written. The constructor has no default for these
    (tests/test_config.py checks); an encoding without a YAML takes its constructor's defaults."""
    path = CONF_POS_DIR / f"{name}.yaml"
    if not path.is_file():
        return {}
    options = OmegaConf.load(path).get("options") or OmegaConf.create({})
    return {option: options[option] for option in options if not OmegaConf.is_interpolation(options, option)}


def takes_axes(name: str, axes: int) -> bool:
    supported = encoding_type(name).supported_axes
    return supported is None or axes in supported


def build(name: str, head_dim: int, num_heads: int, generator: Optional[torch.Generator] = None, axes: int = 2,
          **options) -> PositionEncoding:
    """The encoding `name` with `options`, the rest from its YAML (configured_defaults), for positions with
    `axes` axes."""
    encoding = encoding_type(name)
    if not takes_axes(name, axes):
        able = [other for other in available() if takes_axes(other, axes)]
        supported = " or ".join(map(str, encoding.supported_axes))
        raise ValueError(f"position encoding {name!r} takes positions with {supported} axes, not {axes}; "
                         f"encodings that take {axes}: {', '.join(able)}")
    options = {**configured_defaults(name), **options}
    parameters = {parameter.name: parameter for parameter in inspect.signature(encoding).parameters.values()
                  if parameter.name not in _SHAPE_ARGUMENTS}
    for option in options:
        if option not in parameters:
            raise ValueError(f"unknown option {option!r} for position encoding {name!r}; "
                             f"allowed: {', '.join(parameters) or 'none'}")
    for option, parameter in parameters.items():
        if parameter.default is inspect.Parameter.empty and option not in options:
            raise ValueError(f"position encoding {name!r} needs option {option!r}")
    hints = typing.get_type_hints(encoding.__init__)
    for option, value in options.items():
        _check_option_type(name, option, value, hints.get(option))
    if "generator" in inspect.signature(encoding).parameters:
        options["generator"] = generator
    if "axes" in inspect.signature(encoding).parameters:
        options["axes"] = axes
    return encoding(head_dim=head_dim, num_heads=num_heads, **options)


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
