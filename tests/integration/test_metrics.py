"""Prometheus /metrics of a real server on the simulated device agree with what its clients sent
and received: every request counted once under its outcome, the latency histogram built from
the very timings the clients were given, board telemetry and process figures present."""
from __future__ import annotations

import socket
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from edgesched import Client, DeadlineExceeded, InvalidInput, UnknownModel
from edgesched.config import parse_config
from edgesched.errors import ConfigError
from edgesched.serve.server import Server
from edgesched.stats import BUCKETS_S
from edgesched.telemetry import OPENERS, TelemetrySample
from edgesched.types import TelemetrySource

parser = pytest.importorskip("prometheus_client.parser")
ROOT = Path(__file__).resolve().parents[2]


class FakeBoard:
    name = "fake"

    def read(self) -> TelemetrySample:
        return TelemetrySample(time.monotonic(), gpu_load_pct=42.0, emc_util_pct=17.0,
                               gpu_freq_mhz=612.0, emc_freq_mhz=2133.0,
                               temps_c={"gpu": 51.5, "cpu": 49.0}, power_mw=7300.0,
                               nvpmodel="15W", jetson_clocks=False)

    def close(self) -> None:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sim_config(**server) -> dict:
    return {"device": {"backend": "sim", "sim_device": "orin-nano", "streams": 2},
            "server": server, "telemetry": "sysfs",
            "models": [{"name": "convnet", "path": str(ROOT / "engines/examples/convnet_sliced"),
                        "slo_ms": 50, "priority": "realtime"},
                       {"name": "classifier",
                        "path": str(ROOT / "engines/workloads/classifier.onnx"), "slo_ms": 0.3}]}


def scrape(url: str) -> dict:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out: dict = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_agree_with_what_clients_sent_and_received(monkeypatch):
    monkeypatch.setitem(OPENERS, TelemetrySource.SYSFS, lambda root: FakeBoard())
    port = free_port()
    endpoint = f"ipc://{tempfile.mkdtemp(prefix='es')}/m.sock"
    good = {"convnet": {"image": np.zeros((1, 3, 96, 96), np.float32)},
            "classifier": {"image": np.zeros((1, 3, 224, 224), np.float32)}}
    sent = {"convnet": 0, "classifier": 0}
    got = {"completed": {"convnet": [], "classifier": []}, "invalid": 0, "unknown": 0,
           "expired": 0}
    config = parse_config(sim_config(metrics=f"127.0.0.1:{port}"), "m.yaml", ROOT)
    with Server(config, endpoint=endpoint) as server, Client(endpoint, timeout_s=30) as client:
        for i in range(40):
            model = "convnet" if i % 3 else "classifier"
            sent[model] += 1
            _, timings = client.infer(model, good[model], timings=True)
            got["completed"][model].append(timings)
        for _ in range(3):
            sent["convnet"] += 1
            with pytest.raises(InvalidInput):
                client.infer("convnet", {"image": np.zeros((1, 3, 8, 8), np.float32)})
            got["invalid"] += 1
        sent["classifier"] += 1
        with pytest.raises(DeadlineExceeded):
            client.infer("classifier", good["classifier"], deadline_ms=-1)
        got["expired"] += 1
        with pytest.raises(UnknownModel):
            client.infer("nope", good["convnet"])
        got["unknown"] += 1
        time.sleep(1.3)                   # one telemetry sample (1 s cadence) is in
        m = scrape(server.metrics.url)
        stats = client.stats()
    total = {}
    for model in sent:
        done = got["completed"][model]
        by = {o: m[("edgesched_requests_total", (("model", model), ("outcome", o)))]
              for o in ("completed", "failed", "expired", "rejected", "invalid")}
        total[model] = sum(by.values())
        assert by["completed"] == len(done) == stats["models"][model]["completed"]
        assert by["invalid"] == (3 if model == "convnet" else 0)
        assert by["expired"] == (1 if model == "classifier" else 0)
        assert by["failed"] == by["rejected"] == 0
        # The histogram holds exactly the totals the clients were told, bucket by bucket.
        key = (("model", model),)
        assert m[("edgesched_request_duration_seconds_count", key)] == len(done)
        assert m[("edgesched_request_duration_seconds_sum", key)] == pytest.approx(
            sum(t.total_ms for t in done) / 1e3)
        for bound in BUCKETS_S:
            assert m[("edgesched_request_duration_seconds_bucket",
                      (("le", repr(bound)), ("model", model)))] == sum(
                t.total_ms / 1e3 <= bound for t in done), bound
        assert m[("edgesched_request_queue_seconds_sum", key)] == pytest.approx(
            sum(t.queue_ms for t in done) / 1e3)
        assert m[("edgesched_request_device_seconds_sum", key)] == pytest.approx(
            sum(t.device_ms for t in done) / 1e3)
        assert m[("edgesched_slo_attainment", key)] == pytest.approx(
            stats["models"][model]["slo_attainment"])
        assert m[("edgesched_queue_depth", key)] == 0
        assert m[("edgesched_model_healthy", key)] == 1
    assert total == sent                                # every request counted exactly once
    assert m[("edgesched_bad_requests_total", (("reason", "unknown_model"),))] == 1
    busy = sum(m[("edgesched_stream_busy_seconds_total", (("stream", s),))] for s in "01")
    device_s = sum(t.device_ms for ts in got["completed"].values() for t in ts) / 1e3
    assert busy == pytest.approx(device_s, rel=1e-6)    # each slice's run time, once
    assert m[("edgesched_gpu_frequency_hertz", ())] == 612e6
    assert m[("edgesched_gpu_load_ratio", ())] == pytest.approx(0.42)
    assert m[("edgesched_power_watts", ())] == pytest.approx(7.3)
    assert m[("edgesched_temperature_celsius", (("sensor", "gpu"),))] == 51.5
    assert m[("edgesched_power_mode_info", (("mode", "15W"),))] == 1
    assert m[("process_resident_memory_bytes", ())] > 10e6
    assert m[("process_open_fds", ())] > 0
    assert stats["telemetry"]["gpu_freq_mhz"] == 612.0 and stats["telemetry_source"] == "fake"
    assert stats["stream_running"] == [None, None] and len(stats["stream_busy_s"]) == 2


def test_metrics_are_off_by_default_and_stop_with_the_server():
    endpoint = f"ipc://{tempfile.mkdtemp(prefix='es')}/m.sock"
    with Server(parse_config(sim_config(), "m.yaml", ROOT), endpoint=endpoint) as server:
        assert server.metrics is None
    port = free_port()
    config = parse_config(sim_config(), "m.yaml", ROOT)
    with Server(config, endpoint=endpoint, metrics=str(port)) as server:
        url = server.metrics.url
        assert url == f"http://127.0.0.1:{port}/metrics"
        assert "edgesched_requests_total" in urllib.request.urlopen(url, timeout=10).read().decode()
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)


@pytest.mark.parametrize("value", ["*:9100", ":9100", "0", "host:99999", True, [1]])
def test_a_bad_metrics_address_is_one_config_error_naming_the_key(value):
    with pytest.raises(ConfigError, match=r"m\.yaml: server\.metrics: expected"):
        parse_config(sim_config(metrics=value), "m.yaml", ROOT)


DRIFT_ONLY = {"edgesched_slice_time_ratio", "edgesched_drifting"}   # need a measured profile


def test_the_dashboard_uses_only_exported_metrics(monkeypatch):
    import json
    import re
    monkeypatch.setitem(OPENERS, TelemetrySource.SYSFS, lambda root: FakeBoard())
    endpoint = f"ipc://{tempfile.mkdtemp(prefix='es')}/m.sock"
    config = parse_config(sim_config(), "m.yaml", ROOT)
    with Server(config, endpoint=endpoint, metrics=str(free_port())) as server, \
            Client(endpoint, timeout_s=30) as client:
        client.infer("convnet", {"image": np.zeros((1, 3, 96, 96), np.float32)})  # attainment
        time.sleep(1.2)
        names = {name for name, _ in scrape(server.metrics.url)}
    dashboard = json.loads((ROOT / "configs/grafana-edgesched.json").read_text())
    used = {name for p in dashboard["panels"] for t in p["targets"]
            for name in re.findall(r"\b((?:edgesched|process)_[a-z_]+)\b", t["expr"])}
    assert used and used - names <= DRIFT_ONLY, used - names


def test_drift_against_a_profile_shows_in_stats_and_metrics(tmp_path):
    from edgesched.backends.sim import SimBackend
    from edgesched.sched.profile import Profile
    from edgesched.types import Launch, SliceDemand
    path = ROOT / "engines/examples/convnet_sliced"
    probe = SimBackend("orin-nano", streams=1, noise_sigma=0)
    slices = probe.load("convnet", path, 1).num_slices
    demands = []
    for index in range(slices):         # measured through launches, as calibrate does
        probe.stage(0, "convnet", {})
        probe.launch(Launch(0, "convnet", index, 0))
        (done,) = probe.poll(10.0)
        probe.release(0)
        # A profile that says the slices are twice as fast as this device runs them.
        demands.append(SliceDemand(0.5, 0.2, (done.finished_s - done.started_s) * 1e6 / 2))
    Profile("orin-nano", {"convnet": tuple(demands)}, meta={"gpu_freq_mhz": 1020.0}).save(
        tmp_path / "profile.json")
    data = sim_config()
    data["models"] = data["models"][:1]
    data.update(profile=str(tmp_path / "profile.json"), telemetry="none",
                limits={"drift_sustain_s": 0.3})
    endpoint = f"ipc://{tempfile.mkdtemp(prefix='es')}/m.sock"
    config = parse_config(data, "m.yaml", ROOT)
    image = {"image": np.zeros((1, 3, 96, 96), np.float32)}
    with Server(config, endpoint=endpoint, metrics=str(free_port())) as server, \
            Client(endpoint, timeout_s=30) as client:
        give_up = time.monotonic() + 20
        while time.monotonic() < give_up:
            client.infer("convnet", image)
            time.sleep(0.01)
            drift = client.stats()["models"]["convnet"]["drift"]
            if drift["drifting"]:
                break
        m = scrape(server.metrics.url)
    assert drift["drifting"] and drift["ratio"] == pytest.approx(2.0, rel=0.1)
    assert drift["cause"] is None                      # no telemetry to name one
    assert m[("edgesched_drifting", (("model", "convnet"),))] == 1
    assert m[("edgesched_slice_time_ratio", (("model", "convnet"),))] == pytest.approx(2.0,
                                                                                       rel=0.1)
