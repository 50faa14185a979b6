"""Prometheus metrics at http://HOST:PORT/metrics (`serve --metrics`, `server.metrics`).

prometheus_client serves the text format from its own HTTP thread. Nothing here is updated as
requests happen: a custom Collector turns one `observe.snapshot(server)` (copies of the
statistics, health, drift, streams and the latest telemetry sample) into metric families at
scrape time, so a scrape costs the engine thread one short statistics copy and never blocks
it on HTTP. prometheus_client's process collector adds process_resident_memory_bytes,
process_open_fds, CPU seconds (Linux /proc).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)

from edgesched import endpoints
from edgesched.sched.lifecycle import Outcome
from edgesched.serve.observe import snapshot
from edgesched.stats import BUCKETS_S
from edgesched.version import __version__

if TYPE_CHECKING:
    from edgesched.serve.server import Server

log = logging.getLogger("edgesched.server")
TIME_HISTOGRAMS = {   # Stats histogram -> (metric, help)
    "total": ("edgesched_request_duration_seconds", "arrival to reply ready, completed requests"),
    "queue": ("edgesched_request_queue_seconds", "arrival to first slice launched"),
    "device": ("edgesched_request_device_seconds", "sum of the request's slice run times"),
}


def _histogram(name: str, doc: str, per_model: dict[str, dict]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["model"])
    bounds = [repr(b) for b in BUCKETS_S] + ["+Inf"]
    for model, h in per_model.items():
        cumulative, buckets = 0, []
        for bound, count in zip(bounds, h["counts"]):
            cumulative += count
            buckets.append((bound, cumulative))
        family.add_metric([model], buckets, h["sum_s"])
    return family


class ServerCollector:
    def __init__(self, server: "Server"):
        self._server = server

    def collect(self) -> Iterator:
        s = snapshot(self._server, histograms=True)
        models = s["models"]
        yield InfoMetricFamily("edgesched", "the serving process", value={
            "version": __version__, "backend": s["backend"], "policy": s["policy"]})
        requests = CounterMetricFamily(
            "edgesched_requests", "requests by how they ended (each counted once; as STATS)",
            labels=["model", "outcome"])
        for name, m in models.items():
            for outcome in Outcome:
                requests.add_metric([name, outcome.value], m[outcome.value])
        yield requests
        bad = CounterMetricFamily("edgesched_bad_requests", "requests naming no served model",
                                  labels=["reason"])
        bad.add_metric(["unknown_model"], s["unknown_model"])
        bad.add_metric(["undecodable"], s["undecodable"])
        yield bad
        for key, (metric, doc) in TIME_HISTOGRAMS.items():
            yield _histogram(metric, doc, {n: m["histograms"][key] for n, m in models.items()})
        yield from self._models(models)
        yield from self._streams(s)
        yield from self._board(s.get("telemetry"))
        for metric, doc, value, kind in (
                ("edgesched_uptime_seconds", "since the server started", s["uptime_s"], "g"),
                ("edgesched_stuck_streams", "streams held by a launch past its timeout",
                 s["stuck_streams"], "g"),
                ("edgesched_undeliverable_replies", "replies to clients that had gone",
                 s["undeliverable"], "c")):
            family = (GaugeMetricFamily if kind == "g" else CounterMetricFamily)(metric, doc)
            family.add_metric([], value)
            yield family

    @staticmethod
    def _models(models: dict) -> Iterator:
        gauges = {k: GaugeMetricFamily(f"edgesched_{k}", doc, labels=["model"]) for k, doc in (
            ("slo_attainment", "answered within the SLO / requests the service answered for"),
            ("slo_seconds", "the model's latency objective"),
            ("queue_depth", "requests admitted and not yet answered"),
            ("queue_peak", "most requests ever queued at once"),
            ("model_healthy", "1 healthy, 0 unhealthy (refused without running)"),
            ("slice_time_ratio", "measured / profiled solo slice time (moving)"),
            ("drifting", "1 while slice times stay off the profile (recalibrate)"))}
        failures = CounterMetricFamily("edgesched_launch_failures", "failed slice launches",
                                       labels=["model"])
        for name, m in models.items():
            values = {"slo_attainment": m["slo_attainment"], "slo_seconds": m["slo_ms"] / 1e3,
                      "queue_depth": m["queue_depth"], "queue_peak": m["queue_peak"],
                      "model_healthy": float(m["health"]["healthy"])}
            drift = m.get("drift")
            if drift is not None:
                values.update(slice_time_ratio=drift["ratio"], drifting=float(drift["drifting"]))
            for key, value in values.items():
                if value is not None:       # unknown yet: absent, never a made-up 0
                    gauges[key].add_metric([name], value)
            failures.add_metric([name], m["health"]["failures"])
        yield from gauges.values()
        yield failures

    @staticmethod
    def _streams(s: dict) -> Iterator:
        busy = CounterMetricFamily("edgesched_stream_busy_seconds",
                                   "time the stream ran slices; rate() is its occupancy",
                                   labels=["stream"])
        for i, seconds in enumerate(s["stream_busy_s"]):
            busy.add_metric([str(i)], seconds)
        yield busy
        running = GaugeMetricFamily("edgesched_stream_running", "1 while a slice runs on it",
                                    labels=["stream"])
        for i, model in enumerate(s["stream_running"]):
            running.add_metric([str(i)], float(model is not None))
        yield running

    @staticmethod
    def _board(t: dict | None) -> Iterator:
        if t is None:
            return
        # Base units, as Prometheus names them: ratios 0..1, hertz, watts, celsius.
        for metric, doc, key, scale in (
                ("edgesched_gpu_load_ratio", "iGPU busy share", "gpu_load_pct", 1e-2),
                ("edgesched_emc_utilization_ratio", "EMC (DRAM) bandwidth share",
                 "emc_util_pct", 1e-2),
                ("edgesched_gpu_frequency_hertz", "GPU clock", "gpu_freq_mhz", 1e6),
                ("edgesched_emc_frequency_hertz", "EMC clock", "emc_freq_mhz", 1e6),
                ("edgesched_power_watts", "total input power", "power_mw", 1e-3),
                ("edgesched_telemetry_age_seconds", "age of the telemetry sample", "age_s", 1)):
            if t.get(key) is not None:
                family = GaugeMetricFamily(metric, doc)
                family.add_metric([], t[key] * scale)
                yield family
        temps = GaugeMetricFamily("edgesched_temperature_celsius", "thermal zones",
                                  labels=["sensor"])
        for sensor, c in sorted(t.get("temps_c", {}).items()):
            temps.add_metric([sensor], c)
        yield temps
        if t.get("jetson_clocks") is not None:
            family = GaugeMetricFamily("edgesched_jetson_clocks", "1 when clocks are pinned")
            family.add_metric([], float(t["jetson_clocks"]))
            yield family
        if t.get("nvpmodel") is not None:
            yield InfoMetricFamily("edgesched_power_mode", "nvpmodel power mode",
                                   value={"mode": str(t["nvpmodel"])})


class MetricsServer:
    """/metrics over HTTP in a daemon thread; `close()` stops it."""

    def __init__(self, server: "Server", address: str):
        host, port = endpoints.metrics_address(address)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ServerCollector(server))
        self.registry.register(ProcessCollector(registry=None))
        if not endpoints.host_is_loopback(host):
            log.warning("metrics on %s:%d are readable by anyone who can reach it (no "
                        "authentication)", host, port)
        self._httpd, self._thread = start_http_server(port, host, registry=self.registry)
        self.port = self._httpd.server_port     # the bound one (port 0 in tests)
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{self.port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
