"""What a reload changes: the difference between the config being served and a new one.

Pure (no device, no threads): serve/reload.py carries it out. Models are matched by name:
- added / removed: names only in the new / old config;
- retuned: only the SLO or priority changed, which the scheduler reads per request, so the
  model switches without loading anything;
- reloaded: the path, shapes or instances changed: the model is loaded again (the path is the
  resolved one: a new numbered version served from the same directory is a change);
- restart: the other sections (device, server, scheduler, limits, profile, telemetry), which a
  running server cannot change: reported, left as they were.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from edgesched.config import Config, ModelConfig

# The Config fields a reload applies; every other one needs a restart.
LIVE_SECTIONS = ("models", "source")
_RETUNABLE = ("slo_ms", "priority")


@dataclass(frozen=True)
class ConfigDiff:
    added: tuple[ModelConfig, ...]
    removed: tuple[str, ...]
    retuned: tuple[ModelConfig, ...]      # the new entries
    reloaded: tuple[ModelConfig, ...]     # the new entries
    unchanged: tuple[str, ...]
    restart: tuple[str, ...]              # section names that differ and need a restart

    @property
    def changes_models(self) -> bool:
        return bool(self.added or self.removed or self.retuned or self.reloaded)

    def describe(self) -> str:
        """One line, e.g. `+camera -lidar ~convnet (retuned) ~detector (reloaded)`."""
        parts = [f"+{m.name}" for m in self.added] + [f"-{n}" for n in self.removed]
        parts += [f"~{m.name} (retuned)" for m in self.retuned]
        parts += [f"~{m.name} (reloaded)" for m in self.reloaded]
        return " ".join(parts) or "no model changes"


def _differs(old: ModelConfig, new: ModelConfig, keys) -> bool:
    return any(getattr(old, k) != getattr(new, k) for k in keys)


def diff(old: Config, new: Config) -> ConfigDiff:
    before = {m.name: m for m in old.models}
    after = {m.name: m for m in new.models}
    other = tuple(f.name for f in fields(ModelConfig) if f.name not in _RETUNABLE)
    added, retuned, reloaded, unchanged = [], [], [], []
    for name, m in after.items():
        was = before.get(name)
        if was is None:
            added.append(m)
        elif _differs(was, m, other):
            reloaded.append(m)
        elif _differs(was, m, _RETUNABLE):
            retuned.append(m)
        else:
            unchanged.append(name)
    restart = tuple(f.name for f in fields(Config)
                    if f.name not in LIVE_SECTIONS and getattr(old, f.name) != getattr(new, f.name))
    return ConfigDiff(tuple(added), tuple(n for n in before if n not in after), tuple(retuned),
                      tuple(reloaded), tuple(unchanged), restart)


__all__ = ["ConfigDiff", "LIVE_SECTIONS", "diff"]
