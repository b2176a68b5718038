"""Counting the places where the host would wait for a GPU, on a machine without one.

Code under test runs on the `meta` device, whose tensors have shapes but no values, inside a dispatch mode that
sees every aten op. An op that must read a value back (`.item()`, `int()`, `bool()` on a tensor), a linalg
error check, an op whose output shape depends on values, and a blocking copy between host and device are the
host syncs a CUDA device would make; each is recorded, and answered with a placeholder so that the count
continues past it."""
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten
READS_A_VALUE = {aten._local_scalar_dense.default, aten.is_nonzero.default}
CHECKS_ERRORS = {aten._linalg_check_errors.default}
SHAPE_FROM_VALUES = {aten.nonzero.default, aten.masked_select.default, aten._unique2.default,
                     aten.unique_consecutive.default, aten.unique_dim.default, aten.repeat_interleave.Tensor}
COPIES = {aten._to_copy.default, aten.copy_.default, aten.to.dtype_layout, aten.to.device}


def _copy_ends(func, args, kwargs):
    """(source device, target device or None, non_blocking) of a copy op."""
    if func is aten.copy_.default:
        return args[1].device, args[0].device, args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
    if func is aten.to.device:  # to(self, device, dtype, non_blocking=False, copy=False, ...)
        return args[0].device, args[1], args[3] if len(args) > 3 else kwargs.get("non_blocking", False)
    return args[0].device, kwargs.get("device"), kwargs.get("non_blocking", False)

def _on_device(tensors) -> bool:
    return any(tensor.device.type != "cpu" for tensor in tensors)


class HostSyncs(TorchDispatchMode):
    """`with HostSyncs() as syncs: ...`; then `syncs.found` lists one line per sync."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [leaf for leaf in tree_leaves((args, kwargs)) if isinstance(leaf, torch.Tensor)]
        if func in READS_A_VALUE and _on_device(tensors):
            self.found.append(f"{func} reads a device value")
            return 0
        if func in CHECKS_ERRORS and _on_device(tensors):
            self.found.append(f"{func} reads the device's error codes")
            return None
        if func in SHAPE_FROM_VALUES and _on_device(tensors):
            self.found.append(f"{func} sizes its output from device values")
            return torch.empty(0, dtype=torch.long, device=tensors[0].device)
        if func in COPIES:
            source, target, non_blocking = _copy_ends(func, args, kwargs)
            crosses = target is not None and torch.device(target).type != source.type
            if crosses and not non_blocking:
                self.found.append(f"{func} copies {source} -> {target} blocking")
            if crosses and source.type == "meta":  # a meta tensor has no values to copy out: a placeholder
                if func is aten.copy_.default:
                    return args[0]
                return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype, device=target)
        return func(*args, **kwargs)
