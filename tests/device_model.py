"""A GPU on a CPU-only machine, for device discipline: `SimulatedGpu` treats device "cuda" as a
device of its own while every tensor really lives on the CPU.

Inside the mode, a tensor created on or moved to "cuda" is tagged (it still computes on the CPU
and reports `device == cuda`, `is_cuda == True`); results of ops on tagged tensors are tagged;
`.cpu()` / `.to("cpu")` give untagged copies. An op that mixes a tagged tensor with an untagged
host tensor of one or more dimensions raises `DeviceMix` at once, naming the op and the shapes —
what CUDA would refuse (0-d host tensors are allowed, as CUDA allows CPU scalars; copies, indexing
and `.to` cross devices legitimately). `.numpy()` of a tagged tensor is refused too. Every
host-to-device move of more than `min_numel` elements is recorded in `h2d` (shape, op), so a test
can check that data is moved to the device once, not every step.

    with SimulatedGpu() as gpu:
        ...                      # code under test, with its device resolved to torch.device("cuda")
    gpu.h2d                      # [(shape, where)]
"""
from __future__ import annotations

import traceback
import weakref

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

CUDA = torch.device("cuda")
_DEVICE, _IS_CUDA, _DATA = torch.Tensor.device, torch.Tensor.is_cuda, torch.Tensor.data  # getset descriptors
# ops that cross devices legitimately (or only read metadata)
_CROSSING = {"TensorBase.copy_", "TensorBase.__getitem__", "TensorBase.__setitem__", "TensorBase.index_select",
             "TensorBase.size", "TensorBase.dim", "TensorBase.numel", "TensorBase.element_size",
             "TensorBase.is_floating_point", "TensorBase.is_complex", "TensorBase.__len__",
             "TensorBase.item", "TensorBase.tolist", "TensorBase.__repr__", "TensorBase.__format__",
             "_VariableFunctionsClass._has_compatible_shallow_copy_type"}


class DeviceMix(RuntimeError):
    """An op that CUDA would refuse: a device tensor mixed with a host tensor."""


def _is_cuda(device) -> bool:
    if device is None:
        return False
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, torch.device) and device.type == "cuda"


def _is_cpu(device) -> bool:
    if isinstance(device, str):
        return device == "cpu"
    return isinstance(device, torch.device) and device.type == "cpu"


class SimulatedGpu(TorchFunctionMode):
    def __init__(self, min_numel: int = 64):
        super().__init__()
        self._tags: dict[int, weakref.ref] = {}
        self.min_numel = min_numel
        self.h2d: list[tuple[tuple, str]] = []

    def __enter__(self):
        # nn.Parameter(t) (load_state_dict(assign=True), module construction) makes its tensor with
        # `_make_subclass`, which no mode sees: carry the tag over by hand while the mode is active
        real_new, mode = torch.nn.Parameter.__new__, self

        def new(cls, data=None, requires_grad=True):
            param = real_new(cls, data, requires_grad)
            if data is not None and mode.on_gpu(data):
                mode._tag(param)
            return param

        self._real_parameter_new = real_new
        torch.nn.Parameter.__new__ = new
        return super().__enter__()

    def __exit__(self, *exc):
        torch.nn.Parameter.__new__ = self._real_parameter_new
        return super().__exit__(*exc)

    # -- tags ---------------------------------------------------------------------------------
    def on_gpu(self, t) -> bool:
        ref = self._tags.get(id(t)) if isinstance(t, torch.Tensor) else None
        return ref is not None and ref() is t

    def _tag(self, out):
        def tag(t):
            if isinstance(t, torch.Tensor):
                self._tags[id(t)] = weakref.ref(t)
            return t
        return tree_map(tag, out)

    def _untag(self, t):
        self._tags.pop(id(t), None)

    # -- the mode -----------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = getattr(func, "__qualname__", str(func))
        owner = getattr(func, "__self__", None)  # the descriptor of a property get/set
        if owner is _DEVICE and func.__name__ == "__get__":
            return CUDA if self.on_gpu(args[0]) else func(*args)
        if owner is _IS_CUDA and func.__name__ == "__get__":
            return self.on_gpu(args[0])
        if owner is _DATA and func.__name__ == "__set__":  # Module.to: param.data = moved
            (self._tag if self.on_gpu(args[1]) else self._untag)(args[0])
            return func(*args)
        if name == "TensorBase.pin_memory":
            return args[0]
        if name == "TensorBase.is_pinned":
            return True
        if name == "TensorBase.numpy" and self.on_gpu(args[0]):
            raise DeviceMix(f".numpy() of a device tensor {tuple(args[0].shape)}: copy it to the host first\n"
                            + _where())
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        if name in ("TensorBase.to", "TensorBase.cuda", "TensorBase.cpu"):
            return self._move(func, name, args, kwargs)
        to_gpu = _is_cuda(kwargs.get("device"))
        if to_gpu:
            kwargs["device"] = "cpu"
        flat, _ = tree_flatten((args, kwargs))
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        gpu = [t for t in tensors if self.on_gpu(t)]
        if gpu and name not in _CROSSING:
            host = [t for t in tensors if not self.on_gpu(t) and t.dim() > 0]
            if host:
                raise DeviceMix(f"{name}: device tensor(s) {[tuple(t.shape) for t in gpu][:3]} mixed with host "
                                f"tensor(s) {[tuple(t.shape) for t in host][:3]}\n" + _where())
        out = func(*args, **kwargs)
        if (gpu and name not in ("TensorBase.__setitem__", "TensorBase.copy_")) or to_gpu:
            out = self._tag(out)
        return out

    def _move(self, func, name, args, kwargs):
        src = args[0]
        if name == "TensorBase.cuda":
            target = CUDA
        elif name == "TensorBase.cpu":
            target = torch.device("cpu")
        else:
            target = kwargs.get("device")
            for a in args[1:]:
                if isinstance(a, (str, torch.device)):
                    target = a
                elif isinstance(a, torch.Tensor):
                    target = CUDA if self.on_gpu(a) else a.device
        if _is_cuda(target):
            if "device" in kwargs:
                kwargs["device"] = "cpu"
            args = tuple("cpu" if isinstance(a, (str, torch.device)) and _is_cuda(a) else a for a in args)
            out = func(*args[:1], *args[1:], **kwargs) if name != "TensorBase.cuda" else src
            if not self.on_gpu(src) and src.numel() >= self.min_numel:
                self.h2d.append((tuple(src.shape), _where(short=True)))
            if out is src and not self.on_gpu(src):
                out = src.view_as(src)  # a moved tensor is a new tensor; the host one stays host
            return self._tag(out)
        out = func(*args, **kwargs) if name != "TensorBase.cpu" else src
        if _is_cpu(target) and self.on_gpu(src):
            return src.view_as(src) if out is src else out  # an untagged host copy
        return self._tag(out) if self.on_gpu(src) and target is None else out


def _where(short: bool = False) -> str:
    """The framecast frames of the current stack (the code that issued the op)."""
    frames = [f for f in traceback.extract_stack()[:-2] if "/framecast/" in f.filename]
    if short:
        return ", ".join(f"{f.filename.split('/framecast/')[-1]}:{f.lineno}" for f in frames[-2:])
    return "".join(traceback.format_list(frames[-6:]))
