"""Drift between the profile and the device: measured slice time over the profile's solo time.

The engine thread feeds `Drift.observe` with each finished slice that ran alone on the device
(a co-run slice is slowed by its neighbours, which is interference, not drift). Per model and
slice it keeps an exponentially weighted ratio; a model whose ratio stays beyond
`threshold` (0.20: 20% slower or faster) for `sustain_s` (10 s) is drifting. That is reported
once (an `Event` to log) until the ratio comes back within the threshold, which is reported
once too. `likely_cause` compares the profile's recorded conditions with a telemetry reading.

Pure and cheap: a few float operations per slice, no locks. Other threads may read
`snapshot()`: the tables' keys are fixed at construction, only their values change.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

THRESHOLD = 0.20        # |measured/expected - 1| beyond this counts as drifting
SUSTAIN_S = 10.0        # ... for this long before it is reported
ALPHA = 0.1             # weight of the newest sample in the moving ratio (~10-sample memory)
CLOCK_DROP = 0.05       # a clock this much below the profile's is a cause worth naming
HOT_C = 90.0            # Orin throttles its GPU near 99 C (soft) : 90 C is "near throttling"
ADVICE = "recalibrate (`edgesched calibrate`) under the conditions you serve in"


@dataclass(frozen=True)
class Event:
    model: str
    drifting: bool          # True: drift began (sustained); False: back within the threshold
    ratio: float            # the model's measured/expected when reported
    since_s: float          # engine clock seconds the ratio left (or re-entered) the band


@dataclass
class _Ratio:
    ratio: float | None = None
    samples: int = 0

    def add(self, value: float) -> float:
        self.ratio = value if self.ratio is None else self.ratio + ALPHA * (value - self.ratio)
        self.samples += 1
        return self.ratio


@dataclass
class _Model:
    ratio: _Ratio
    slices: list[_Ratio]
    outside_since_s: float | None = None   # when the ratio left the band (None: inside it)
    drifting: bool = False                  # reported as drifting
    cause: str | None = None


class Drift:
    def __init__(self, expected_us: Mapping[str, tuple[float, ...]],
                 threshold: float = THRESHOLD, sustain_s: float = SUSTAIN_S):
        """expected_us: model -> each slice's solo duration in the profile (microseconds)."""
        self.threshold, self.sustain_s = threshold, sustain_s
        self._expected_s = {m: tuple(us / 1e6 for us in ds) for m, ds in expected_us.items()}
        self._models = {m: _Model(_Ratio(), [_Ratio() for _ in ds])
                        for m, ds in self._expected_s.items()}

    def expects(self, model: str, index: int) -> bool:
        slices = self._expected_s.get(model)
        return slices is not None and index < len(slices)

    def observe(self, model: str, index: int, measured_s: float, now_s: float) -> Event | None:
        """One slice that ran alone took `measured_s`; an Event when the model's state changes."""
        if not self.expects(model, index):
            return None
        value = measured_s / self._expected_s[model][index]
        m = self._models[model]
        m.slices[index].add(value)
        ratio = m.ratio.add(value)
        if abs(ratio - 1.0) <= self.threshold:
            m.outside_since_s = None
            if m.drifting:
                m.drifting, m.cause = False, None
                return Event(model, False, ratio, now_s)
            return None
        if m.outside_since_s is None:
            m.outside_since_s = now_s
        if not m.drifting and now_s - m.outside_since_s >= self.sustain_s:
            m.drifting = True
            return Event(model, True, ratio, m.outside_since_s)
        return None

    def set_cause(self, model: str, cause: str | None) -> None:
        self._models[model].cause = cause

    def snapshot(self) -> dict[str, dict]:
        """Per model: ratio (None before a solo sample), per-slice ratios, drifting, since_s,
        cause. Plain values, safe to encode."""
        return {name: {"ratio": m.ratio.ratio, "samples": m.ratio.samples,
                       "slices": [s.ratio for s in m.slices], "drifting": m.drifting,
                       "outside_since_s": m.outside_since_s, "cause": m.cause}
                for name, m in self._models.items()}


def likely_cause(meta: Mapping, now: Mapping) -> str | None:
    """What telemetry shows changed since the profile was measured, or None if nothing does.
    `meta`: the profile's recorded conditions (nvpmodel, jetson_clocks, gpu_freq_mhz,
    emc_freq_mhz); `now`: the same keys read now, plus temps_c (sensor -> degrees C)."""
    causes = []
    for key, what in (("nvpmodel", "power mode"), ("jetson_clocks", "jetson_clocks")):
        then, current = meta.get(key), now.get(key)
        if then is not None and current is not None and then != current:
            causes.append(f"{what} changed ({then} -> {current})")
    for key, what in (("gpu_freq_mhz", "GPU clock"), ("emc_freq_mhz", "EMC clock")):
        then, current = meta.get(key), now.get(key)
        if then and current is not None and abs(current - then) > CLOCK_DROP * then:
            causes.append(f"{what} {then:.0f} -> {current:.0f} MHz")
    hot = {k: c for k, c in (now.get("temps_c") or {}).items() if c >= HOT_C}
    if hot:
        causes.append("near thermal throttling ("
                      + ", ".join(f"{k} {c:.0f} C" for k, c in sorted(hot.items())) + ")")
    return "; ".join(causes) or None


def describe(event: Event, cause: str | None, threshold: float, sustain_s: float) -> str:
    """The one log line for an event."""
    if not event.drifting:
        return (f"model {event.model!r}: slice times are back within {threshold:.0%} of the "
                f"profile (measured/expected {event.ratio:.2f})")
    return (f"model {event.model!r}: slices run at {event.ratio:.2f}x the profile's time for "
            f"over {sustain_s:g} s (threshold {threshold:.0%})"
            + (f"; likely cause: {cause}" if cause else "; telemetry shows no cause")
            + f"; the scheduler's predictions are off: {ADVICE}")
