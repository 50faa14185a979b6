"""`edgesched demo`: serve the shipped example models and drive a mixed workload at them.

Realtime models get camera-like clients (fixed frame rate; a late frame is sent as soon as the
previous answer arrives, as a camera pipeline would); best-effort models get closed-loop
clients that send again as soon as answered. Latencies are measured by the clients.

Then, so that the first command shows what the scheduler is for, the same models under the
same arrivals run on a simulated Jetson (SIM_DEVICE) under fifo, greedy and interference for
SIM_SECONDS of virtual time: realtime p99 against the model alone, and best-effort work
against fifo. Those figures are simulated and labelled so.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgesched.commands.table import format_table
from edgesched.config import Config, load_config
from edgesched.errors import RequestError
from edgesched.paths import shipped
from edgesched.serve.client import Client
from edgesched.serve.server import Server
from edgesched.types import BackendName, PolicyName, Priority

CAMERA_FPS = {"convnet": 30.0, "depthwise": 15.0}   # frames/s per realtime model
CLOSED_LOOP_CLIENTS = 2                               # per best-effort model
SIM_DEVICE = "orin-nano"        # the smallest module: where sharing the GPU matters most
SIM_SECONDS = 3.0               # virtual seconds per policy (a few wall seconds in all)
SIM_POLICIES = ("fifo", "greedy", "interference")
# The shipped example ONNX files the simulated part cuts, and how finely (sliced here, as
# `simulate` does, since the live demo may serve pre-sliced directories).
SIM_MODELS = {"convnet": ("engines/examples/convnet.onnx", 3),
              "depthwise": ("engines/examples/depthwise.onnx", 2),
              "attention": ("engines/examples/attention.onnx", 2)}


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def add_error(self, error: RequestError) -> None:
        self.errors[type(error).__name__] = self.errors.get(type(error).__name__, 0) + 1


def _inputs(spec: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {t["name"]: rng.random([d or 1 for d in t["shape"]]).astype(t["dtype"])
            for t in spec["inputs"]}


def _drive(client: Client, spec: dict, period_s: float | None, stop_s: float,
           tally: Tally, lock: threading.Lock, seed: int) -> None:
    inputs = _inputs(spec, np.random.default_rng(seed))
    next_s = time.monotonic()
    while True:
        if period_s is not None:
            time.sleep(max(0.0, next_s - time.monotonic()))
            next_s += period_s
        start = time.monotonic()
        if start >= stop_s:
            return
        try:
            client.infer(spec["name"], inputs)
            with lock:
                tally.latencies_ms.append((time.monotonic() - start) * 1e3)
        except RequestError as e:
            with lock:
                tally.add_error(e)


def run_demo(seconds: float = 10.0, policy: str | None = None,
             config: Config | None = None, simulated: bool = True) -> str:
    """Serve, drive the workload for `seconds`, and return the printed report; with
    `simulated`, followed by the simulated policy comparison."""
    config = config or load_config(shipped("configs/default.yaml"))
    # The examples are ONNX: serve them on ONNX Runtime even where `auto` would pick TensorRT.
    config = dataclasses.replace(config, device=dataclasses.replace(
        config.device, backend=BackendName.ONNXRUNTIME))
    if policy is not None:
        config = dataclasses.replace(config, scheduler=dataclasses.replace(
            config.scheduler, policy=PolicyName(policy)))
    with tempfile.TemporaryDirectory(prefix="edgesched-demo-") as tmp:
        endpoint = f"ipc://{Path(tmp) / 'demo.sock'}"
        with Server(config, endpoint=endpoint), Client(endpoint, timeout_s=30.0) as client:
            specs = client.models()
            tallies = {s["name"]: Tally() for s in specs}
            lock = threading.Lock()
            stop_s = time.monotonic() + seconds
            threads = []
            for i, spec in enumerate(specs):
                realtime = spec["priority"] == Priority.REALTIME.value
                fps = CAMERA_FPS.get(spec["name"], 20.0)
                for j in range(1 if realtime else CLOSED_LOOP_CLIENTS):
                    threads.append(threading.Thread(target=_drive, args=(
                        client, spec, 1.0 / fps if realtime else None, stop_s,
                        tallies[spec["name"]], lock, 100 * i + j), daemon=True))
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            stats = client.stats()
    report = _report(specs, tallies, stats, seconds)
    if simulated:
        report += "\n\n" + simulated_comparison(specs)
    return report


def simulated_comparison(specs: list[dict], seconds: float = SIM_SECONDS) -> str:
    """The served models (those shipped as example ONNX files) under the demo's arrivals on a
    simulated SIM_DEVICE, per policy in SIM_POLICIES: one line per policy."""
    from edgesched.commands.simulate import simulate
    from edgesched.commands.workload import Arrival, Workload, WorkloadModel
    models = []
    cameras = 0
    for spec in specs:
        if spec["name"] not in SIM_MODELS:
            continue
        path, slices = SIM_MODELS[spec["name"]]
        realtime = spec["priority"] == Priority.REALTIME.value
        # Independent cameras are not in phase: each starts 7 ms after the one before, and
        # every frame is up to 1 ms late (as in configs/workloads/robot.yaml).
        arrival = (Arrival("periodic", fps=CAMERA_FPS.get(spec["name"], 20.0),
                           phase_ms=7.0 * cameras, jitter_ms=1.0) if realtime
                   else Arrival("closed", concurrency=CLOSED_LOOP_CLIENTS))
        cameras += realtime
        models.append(WorkloadModel(spec["name"], shipped(path), slices, float(spec["slo_ms"]),
                                    Priority(spec["priority"]), arrival))
    if not models:
        return "(no shipped example models served: no simulated comparison)"
    workload = Workload(SIM_DEVICE, seconds, 1, tuple(models), "edgesched demo")
    result = simulate(workload, list(SIM_POLICIES), processes=os.cpu_count() or 1)
    fifo = result["policies"]["fifo"]["best_effort_work"]
    realtime = [m.name for m in models if m.priority is Priority.REALTIME]
    rows = []
    for name, body in result["policies"].items():
        per = body["models"]
        worst = max((per[m]["p99_ms"] / result["solo"][m]["p99_ms"] for m in realtime
                     if per[m]["p99_ms"] and result["solo"][m]["p99_ms"]), default=None)
        met = [per[m]["slo_attainment"] for m in per if per[m]["slo_attainment"] is not None]
        rows.append([name, worst, f"{100 * min(met):.1f}%" if met else "-",
                     body["best_effort_work"] / fifo if fifo else None])
    return (f"SIMULATED: the same models and arrivals on a simulated {SIM_DEVICE}, "
            f"{seconds:g} virtual s per policy (not measured on a device)\n"
            + format_table(["policy", "realtime_p99/solo", "worst_slo_met",
                            "best_effort_work_vs_fifo"], rows)
            + "\nrealtime_p99/solo: the worst realtime model's p99 over its p99 alone; "
              "best-effort work in solo device-seconds per second, over fifo's.")


def _report(specs: list[dict], tallies: dict[str, Tally], stats: dict, seconds: float) -> str:
    rows = []
    for spec in specs:
        tally = tallies[spec["name"]]
        lat = np.asarray(tally.latencies_ms)
        answered = lat.size + sum(tally.errors.values())
        met = int((lat <= spec["slo_ms"]).sum())
        rows.append([
            spec["name"], spec["priority"], spec["slo_ms"], lat.size,
            float(np.percentile(lat, 50)) if lat.size else None,
            float(np.percentile(lat, 99)) if lat.size else None,
            lat.size / seconds, f"{100.0 * met / answered:.1f}%" if answered else "-",
            ", ".join(f"{k} {v}" for k, v in tally.errors.items()) or "-",
        ])
    table = format_table(["model", "priority", "slo_ms", "ok", "p50_ms", "p99_ms", "req/s",
                          "slo_met", "errors"], rows)
    return (f"edgesched demo: {seconds:g} s, backend {stats['backend']}, policy "
            f"{stats['policy']}, {stats['streams']} streams (latency measured by the clients)\n"
            + table)
