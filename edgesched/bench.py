"""`edgesched bench overhead`: what the server adds to a request, against a raw ZeroMQ echo.

Measured in one run, on one machine, over the same transport and with the same bytes:
  (a) round trip of INFER through a real server (its own process) for a small model,
  (b) the same model called in-process with ONNX Runtime (same thread settings),
  (c) a raw pyzmq DEALER -> ROUTER echo (its own process) of the same request frames.
Server overhead = (a) - (b); the figure of merit is overhead / (c) at p50.
"""
from __future__ import annotations

import multiprocessing
import tempfile
import time
from pathlib import Path

import numpy as np

from edgesched.config import Config
from edgesched.table import format_table


def _percentiles_us(samples_s: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.asarray(samples_s) * 1e6, [50, 99])
    return float(p50), float(p99)


def _echo(endpoint: str, ready) -> None:
    import zmq
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(endpoint)
    ready.set()
    while True:
        frames = sock.recv_multipart(copy=False)
        if len(frames) == 2 and frames[1].bytes == b"STOP":
            break
        sock.send_multipart(frames, copy=False)
    sock.close(linger=0)
    ctx.term()


def _serve(config: Config, endpoint: str, ready, stop) -> None:
    from edgesched.serve.server import Server
    with Server(config, endpoint=endpoint):
        ready.set()
        stop.wait()


def _time(fn, n: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def _in_process(path: Path, inputs: dict, threads: int, n: int, warmup: int) -> list[float]:
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(str(path), options,
                                           providers=["CPUExecutionProvider"])
    return _time(lambda: session.run(None, inputs), n, warmup)


def _raw_echo(endpoint: str, frames: list, n: int, warmup: int) -> list[float]:
    import zmq
    spawn = multiprocessing.get_context("spawn")
    ready = spawn.Event()
    proc = spawn.Process(target=_echo, args=(endpoint, ready), daemon=True)
    proc.start()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        ready.wait(30)
        sock.connect(endpoint)

        def once():
            sock.send_multipart(frames, copy=False)
            sock.recv_multipart(copy=False)
        return _time(once, n, warmup)
    finally:
        sock.send_multipart([b"STOP"])
        proc.join(5)
        sock.close()
        ctx.term()


def _through_server(config: Config, endpoint: str, model: str, inputs: dict,
                    n: int, warmup: int) -> list[float]:
    from edgesched.serve.client import Client
    spawn = multiprocessing.get_context("spawn")
    ready, stop = spawn.Event(), spawn.Event()
    proc = spawn.Process(target=_serve, args=(config, endpoint, ready, stop), daemon=True)
    proc.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the benchmark server did not start within 60 s")
        inside: list[float] = []

        def once():
            pending = client.submit(model, inputs)
            pending.result()
            inside.append(pending.timings["total_ms"] / 1e3)
        with Client(endpoint, timeout_s=30.0) as client:
            return _time(once, n, warmup), inside[warmup:]
    finally:
        stop.set()
        proc.join(30)


def bench_overhead(config: Config, model: str, n: int = 2000, warmup: int = 200) -> str:
    from edgesched.serve import wire
    spec = next((m for m in config.models if m.name == model), None)
    if spec is None:
        from edgesched.errors import ConfigError
        raise ConfigError("--model", "model", "one of " + ", ".join(m.name for m in config.models),
                          model)
    import onnxruntime
    probe = onnxruntime.InferenceSession(str(spec.path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    inputs = {a.name: rng.random([d if isinstance(d, int) else 1 for d in a.shape])
              .astype(np.float32) for a in probe.get_inputs()}
    frames = wire.encode(wire.INFER, {"id": 1, "model": model}, inputs)
    with tempfile.TemporaryDirectory(prefix="edgesched-bench-") as tmp:
        a, inside = _through_server(config, f"ipc://{tmp}/server.sock", model, inputs, n, warmup)
        b = _in_process(spec.path, inputs, config.device.cpu_threads_per_stream, n, warmup)
        c = _raw_echo(f"ipc://{tmp}/echo.sock", frames, n, warmup)
    (a50, a99), (b50, b99), (c50, c99), (i50, i99) = map(_percentiles_us, (a, b, c, inside))
    rows = [["(a) through the server", a50, a99],
            ["    of which arrival -> done inside the server", i50, i99],
            ["(b) in-process ONNX Runtime", b50, b99],
            ["(c) raw pyzmq echo", c50, c99], ["server overhead (a)-(b)", a50 - b50, None]]
    size = sum(v.nbytes for v in inputs.values())
    return (f"edgesched bench overhead: model {model} ({size} input bytes), {n} requests, ipc\n"
            + format_table(["path", "p50_us", "p99_us"], rows)
            + f"\nratio (a-b)/c at p50: {(a50 - b50) / c50:.2f} (target <= 1.5)")
