"""Generation schedules by name (`schedule.name`): import strings of `Schedule` subclasses
(framecast/schedulers/base.py). Adding a schedule is one module plus one line here; importing
this registry imports no schedule.
"""
from __future__ import annotations

import importlib

SCHEDULES: dict[str, str] = {
    "full": "framecast.schedulers.full:FullSchedule",
    "rollout": "framecast.schedulers.rollout:RolloutSchedule",
    "dualparal": "framecast.schedulers.dualparal:DualParalSchedule",
    "nfd": "framecast.schedulers.nfd_schedule:NfdSchedule",
    "vin": "framecast.schedulers.vin:VinSchedule",
    "task": "framecast.schedulers.task:TaskSchedule",
    "window": "framecast.schedulers.window:WindowSchedule",
}


def schedule_class(name: str):
    """The Schedule subclass registered as `name`; an unknown name raises listing the valid ones."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")
    module, attr = SCHEDULES[name].split(":")
    return getattr(importlib.import_module(module), attr)
