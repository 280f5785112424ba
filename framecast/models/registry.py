"""Model families by name (`model.kind`): name -> import string "module:Class".

Importing this module imports no model code; `model_class` imports the one family asked for.
A family is a plain `nn.Module` with the contract of `framecast.models.blocks`: `embed`,
`blocks`, `head`, `place`.
"""
from __future__ import annotations

import importlib

FAMILIES: dict[str, str] = {
    "wan": "framecast.models.wan:WanModel",  # Wan2.1 T2V DiT (reference; diffusers-equal)
    "latte": "framecast.models.latte:LatteModel",  # Latte T2V: interleaved spatial/temporal DiT (diffusers-equal)
    "vdt": "framecast.models.vdt:VdtModel",  # VDT: factorised temporal/spatial DiT, mask-modelled tasks
    "avdit": "framecast.models.avdit:AvditModel",  # AV-DiT (engine-defined): video + audio on a frozen Wan backbone
}


def model_class(kind: str) -> type:
    """The class of family `kind`; an unknown name raises listing the registered ones."""
    if kind not in FAMILIES:
        raise ValueError(f"unknown model.kind {kind!r}; valid: {', '.join(sorted(FAMILIES))}")
    module, name = FAMILIES[kind].split(":")
    return getattr(importlib.import_module(module), name)
