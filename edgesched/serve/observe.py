"""What a running server shows about itself: the STATS body, board telemetry, drift set-up.

`snapshot(server)` is the one view that STATS (and so `status` and `top`) and the Prometheus
collector read: copies only, taken on the caller's thread (the serve thread, or the metrics
HTTP thread), with no engine-thread lock held beyond the statistics' own few-microsecond copy.
`Board` samples the configured telemetry source once a second in its own thread (a jtop or
tegrastats read may take tens of milliseconds: never on the serve thread).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import TYPE_CHECKING, Callable, Mapping

from edgesched.config import Config
from edgesched.sched.drift import Drift, likely_cause
from edgesched.sched.profile import Profile
from edgesched.serve import residency
from edgesched.types import ModelInfo, PolicyName

if TYPE_CHECKING:
    from edgesched.serve.server import Server

log = logging.getLogger("edgesched.server")
TELEMETRY_INTERVAL_S = 1.0      # `top` refreshes once a second; a scrape every 15 s or so


class Board:
    """The board's telemetry, sampled in the background; `latest()` is a dict or None."""

    def __init__(self, source: str):
        self.source, self._reader, self._sampler = source, None, None
        try:
            from edgesched.telemetry import Sampler, open_reader
            self._reader = open_reader(source)
            if self._reader is not None:
                self._sampler = Sampler(self._reader, TELEMETRY_INTERVAL_S, capacity=8)
        except Exception as e:   # telemetry is for watching: never a reason not to serve
            log.warning("telemetry %s unavailable: %s", source, e)

    @property
    def name(self) -> str | None:
        return None if self._reader is None else self._reader.name

    def start(self) -> None:
        if self._sampler is not None:
            self._sampler.start()

    def close(self) -> None:
        if self._sampler is not None:
            self._sampler.stop()
        if self._reader is not None:
            self._reader.close()

    def latest(self) -> dict | None:
        sample = None if self._sampler is None else self._sampler.latest()
        if sample is None:
            return None
        out = dataclasses.asdict(sample)
        out["age_s"] = time.monotonic() - sample.time_s
        return out


def drift_profile(config: Config, policy_profile: Profile | None, device: str) -> Profile | None:
    """The measured profile slice times are compared with: the scheduler's, else (a policy
    that reads none) the configured file if it was measured on this device. Cost-model
    estimates are not measurements: no drift against them."""
    profile = policy_profile
    if profile is None and config.scheduler.policy is not PolicyName.INTERFERENCE \
            and config.profile is not None and config.profile.is_file():
        try:
            profile = Profile.load(config.profile)
        except (ValueError, OSError) as e:
            log.info("no drift watch: profile %s unreadable (%s)", config.profile, e)
            return None
        if profile.device != device:
            log.info("no drift watch: profile %s is for %r, not %r", config.profile,
                     profile.device, device)
            return None
    if profile is None or profile.meta.get("estimated"):
        return None
    return profile


def make_drift(config: Config, profile: Profile | None, models: Mapping[str, ModelInfo],
               telemetry: Callable[[], dict | None]) -> tuple[Drift | None, object]:
    """(Drift over the served models the profile covers, the engine's cause callback)."""
    if profile is None:
        return None, None
    expected = {name: tuple(d.duration_us for d in profile.demands[name])
                for name, info in models.items()
                if len(profile.demands.get(name, ())) == info.num_slices}
    if not expected:
        return None, None
    drift = Drift(expected, config.limits.drift_threshold, config.limits.drift_sustain_s)

    def cause(model: str) -> str | None:
        now = telemetry()
        return None if now is None else likely_cause(profile.meta, now)
    return drift, cause


def snapshot(server: "Server", histograms: bool = False) -> dict:
    """The STATS body: per-model statistics, health and drift; streams; board telemetry."""
    engine = server.engine
    stats = server.stats.snapshot(histograms)
    drift = engine.drift.snapshot() if engine.drift is not None else {}
    for name, health in engine.health.snapshot().items():
        m = stats["models"].get(name)
        if m is None:        # a reload changed the model set between the two snapshots
            continue
        m["health"] = health
        m["drift"] = drift.get(name)
    running = [None] * server.backend.num_streams
    for launch in list(engine.state.running.values()):   # a C-level copy under the GIL
        if launch.stream < len(running):
            running[launch.stream] = launch.model
    stats.update(policy=engine.policy.name, stuck_streams=engine.stuck_streams,
                 backend=server.backend.name, streams=server.backend.num_streams,
                 stream_running=running, undeliverable=server.undeliverable,
                 uptime_s=time.monotonic() - server.started_s, pid=os.getpid(),
                 telemetry=server.board.latest(), telemetry_source=server.board.name,
                 drift={"threshold": server.config.limits.drift_threshold,
                        "sustain_s": server.config.limits.drift_sustain_s,
                        "watched": engine.drift is not None})
    residency.annotate_stats(server, stats)       # limits.device_memory_mb
    return stats
