"""What each model family runs under, derived from the checks that refuse it (never a hand-kept table).

For every registered family (`model.kind`), a config of that family (the `tiny` preset's shapes with
`model.kind` set) is put to every registered schedule's `check_config` (with that schedule's
default options) and to every feature cache's `check_config`: what passes is supported, what is
refused carries the refusal's own one line. `framecast info` prints it; docs/model-zoo.md has the
table and the reasons.
"""
from __future__ import annotations

from dataclasses import dataclass, field

BASE_PRESET = "tiny"  # the shapes the checks see: patch [1, p, p], temporal stride 1 (what nfd needs)


@dataclass
class FamilySupport:
    kind: str                                               # model.kind
    summary: str                                            # what the family is
    checkpoints: str                                        # what it loads
    tasks: tuple[str, ...]                                  # VDT-style tasks (empty: text to video only)
    schedules: list[str] = field(default_factory=list)      # schedule.name values it runs under
    caches: list[str] = field(default_factory=list)         # cache.kind values it runs with
    refused: dict[str, str] = field(default_factory=dict)   # "schedule.name=X" / "cache.kind=Y" -> the one line


def family_support(kind: str) -> FamilySupport:
    """Support of family `kind`, from the schedules' and caches' own config checks."""
    from framecast.config import load_config
    from framecast.models.caches import KINDS, cache_class
    from framecast.models.registry import model_class
    from framecast.schedulers.registry import SCHEDULES, schedule_class

    family = model_class(kind)
    cfg = load_config(BASE_PRESET, [f"model.kind={kind}"])
    out = FamilySupport(kind, family.summary, family.checkpoints, tuple(family.tasks))
    for name in SCHEDULES:
        problem = schedule_class(name).check_config(cfg, getattr(cfg.schedule, name))
        if problem:
            out.refused[f"schedule.name={name}"] = problem
        else:
            out.schedules.append(name)
    for name in (k for k in KINDS if KINDS[k]):
        problem = cache_class(name).check_config(cfg)
        if problem:
            out.refused[f"cache.kind={name}"] = problem
        else:
            out.caches.append(name)
    return out


def family_lines() -> list[str]:
    """The `framecast info` section: one block per registered family."""
    from framecast.models.registry import FAMILIES

    lines = ["model families (model.kind; docs/model-zoo.md):"]
    for kind in FAMILIES:
        s = family_support(kind)
        lines += [f"  {kind}: {s.summary}",
                  f"    schedules: {', '.join(s.schedules)}",
                  f"    feature caches: {', '.join(s.caches)}",
                  f"    tasks: {', '.join(s.tasks) if s.tasks else 'none (text to video)'}",
                  f"    loads: {s.checkpoints}"]
        lines += [f"    refused {what}: {why}" for what, why in s.refused.items()]
    return lines
