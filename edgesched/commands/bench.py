"""`edgesched bench overhead`: what the server adds to a request, against a raw ZeroMQ echo.

Measured in one run, on one machine, over the same transport and with the same bytes, in
interleaved rounds (a shared machine's noise then hits all three alike):
  (a) round trip of INFER through a real server (its own process) for a small model,
  (b) the same model called in-process with ONNX Runtime (same thread settings),
  (c) a raw pyzmq DEALER -> ROUTER echo (its own process) of the same request frames,
  (d) the client library's round trip to a null server (its own process): a ROUTER that reads
      the request's header and sends back a ready INFER reply of the model's outputs, the
      least any Python server does per request.
Server overhead = (a) - (b); the figure of merit is overhead / (c) at p50; (d) / (c) is the
floor that figure has with this client, and (a) - (b) - (d) what the server adds above it.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import tempfile
import time
from pathlib import Path

import numpy as np

from edgesched.commands.table import format_table
from edgesched.config import Config
from edgesched.modelfiles.manifest import read_manifest


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


def _null(endpoint: str, outputs: dict, ready) -> None:
    import zmq
    from edgesched.serve import wire
    from edgesched.types import Timings
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(endpoint)
    ready.set()
    timings = Timings(0.0, 0.0, 0.0)
    while True:
        frames = sock.recv_multipart(copy=False)
        if len(frames) == 2 and frames[1].bytes == b"STOP":
            break
        request_id = wire.decode_header(frames[2].buffer)["id"]
        sock.send_multipart([frames[0], *wire.encode_result(request_id, outputs, timings)],
                            copy=False)
    sock.close(linger=0)
    ctx.term()


def _serve(config: Config, endpoint: str, stop, ready) -> None:
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


class _InProcess:
    """The model run directly with ONNX Runtime: one session, or a sliced model's sessions in
    order (what an application would do without a server)."""

    def __init__(self, path: Path, inputs: dict, threads: int):
        import onnxruntime
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        files = ([(read_manifest(path).slice_path(s), s) for s in read_manifest(path).slices]
                 if path.is_dir() else [(path, None)])
        self._steps = [(onnxruntime.InferenceSession(str(f), options,
                                                     providers=["CPUExecutionProvider"]), e)
                       for f, e in files]
        self._inputs = inputs

    def __call__(self) -> dict:
        tensors = dict(self._inputs)
        for session, entry in self._steps:
            names = [o.name for o in session.get_outputs()] if entry is None \
                else list(entry.outputs)
            feed = tensors if entry is None else {k: tensors[k] for k in entry.inputs}
            tensors.update(zip(names, session.run(names, feed)))
        return tensors


def _start(target, args: tuple, what: str):
    """`target(*args, ready)` in a spawned process, once it has set `ready`."""
    spawn = multiprocessing.get_context("spawn")
    ready = spawn.Event()
    proc = spawn.Process(target=target, args=(*args, ready), daemon=True)
    proc.start()
    if not ready.wait(60):
        _end(proc, 0)
        raise RuntimeError(f"the {what} process did not start within 60 s")
    return proc


def _end(proc, wait_s: float) -> None:
    """Let `proc` finish for up to wait_s, then terminate it: none outlives the benchmark."""
    proc.join(wait_s)
    if proc.is_alive():
        proc.terminate()
        proc.join(5)


def _client_of(proc, endpoint: str):
    """A Client of the server `proc` runs; `proc` is ended if the client cannot be made."""
    from edgesched.serve.client import Client
    try:
        return Client(endpoint, timeout_s=30.0)
    except BaseException:
        _end(proc, 0)
        raise


class _Echo:
    """A DEALER round trip to a raw pyzmq ROUTER echo in its own process."""

    def __init__(self, endpoint: str, frames: list):
        import zmq
        self._proc = _start(_echo, (endpoint,), "echo")
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self._frames = frames

    def __call__(self) -> None:
        self._sock.send_multipart(self._frames, copy=False)
        self._sock.recv_multipart(copy=False)

    def close(self) -> None:
        self._sock.send_multipart([b"STOP"])
        _end(self._proc, 5)
        self._sock.close()
        self._ctx.term()


class _Null:
    """The client library's INFER round trip to the null server (_null) in its own process."""

    def __init__(self, endpoint: str, model: str, inputs: dict, outputs: dict):
        self._proc = _start(_null, (endpoint, outputs), "null server")
        self._client = _client_of(self._proc, endpoint)
        self._model, self._inputs = model, inputs

    def __call__(self) -> None:
        self._client.submit(self._model, self._inputs).result()

    def close(self) -> None:
        import zmq
        sock = self._client._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self._client.endpoint)
        sock.send_multipart([b"STOP"])
        _end(self._proc, 5)
        sock.close()
        self._client.close()


class _Served:
    """An INFER round trip through a real server in its own process; keeps the server's own
    arrival -> done time of each request too."""

    def __init__(self, config: Config, endpoint: str, model: str, inputs: dict):
        self._stop = multiprocessing.get_context("spawn").Event()
        self._proc = _start(_serve, (config, endpoint, self._stop), "benchmark server")
        self._client = _client_of(self._proc, endpoint)
        self._model, self._inputs = model, inputs
        self.inside_s: list[float] = []

    def __call__(self) -> None:
        pending = self._client.submit(self._model, self._inputs)
        pending.result()
        self.inside_s.append(pending.timings.total_ms / 1e3)

    def close(self) -> None:
        self._client.close()
        self._stop.set()
        _end(self._proc, 30)


def bench_overhead(config: Config, model: str, n: int = 2000, warmup: int = 200) -> str:
    from edgesched.serve import wire
    spec = next((m for m in config.models if m.name == model), None)
    if spec is None:
        from edgesched.errors import ConfigError
        raise ConfigError("--model", "model", "one of " + ", ".join(m.name for m in config.models),
                          model)
    from edgesched.backends.onnxruntime import OnnxRuntimeBackend
    probe = OnnxRuntimeBackend(streams=1)
    try:
        loaded = probe.load(model, spec.path, 1)
    finally:
        probe.close()
    rng = np.random.default_rng(0)
    inputs = {t.name: rng.random([d or 1 for d in t.shape]).astype(t.dtype)
              for t in loaded.inputs}
    frames = wire.encode_infer(wire.infer_request(1, model, inputs))
    rounds = 10      # interleaved, so a noisy neighbour hits all four paths alike
    a, b, c, d = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="edgesched-bench-") as tmp, \
            contextlib.ExitStack() as running:      # every process started is ended
        direct = _InProcess(spec.path, inputs, config.device.cpu_threads_per_stream)
        tensors = direct()
        outputs = {t.name: tensors[t.name] for t in loaded.outputs}
        served = _Served(config, f"ipc://{tmp}/server.sock", model, inputs)
        running.callback(served.close)
        echo = _Echo(f"ipc://{tmp}/echo.sock", frames)
        running.callback(echo.close)
        null = _Null(f"ipc://{tmp}/null.sock", model, inputs, outputs)
        running.callback(null.close)
        paths = ((served, a), (direct, b), (echo, c), (null, d))
        for fn, _ in paths:
            _time(fn, 0, warmup)
        served.inside_s.clear()
        for _ in range(rounds):
            for fn, out in paths:
                out.extend(_time(fn, max(n // rounds, 1), 0))
    inside = served.inside_s
    (a50, a99), (b50, b99), (c50, c99), (d50, d99), (i50, i99) = map(
        _percentiles_us, (a, b, c, d, inside))
    rows = [["(a) through the server", a50, a99],
            ["    of which arrival -> done inside the server", i50, i99],
            ["(b) in-process ONNX Runtime", b50, b99],
            ["(c) raw pyzmq echo", c50, c99],
            ["(d) client library to a null server", d50, d99],
            ["server overhead (a)-(b)", a50 - b50, None],
            ["above the null server (a)-(b)-(d)", a50 - b50 - d50, None]]
    size = sum(v.nbytes for v in inputs.values())
    return (f"edgesched bench overhead: model {model} ({loaded.num_slices} slices, {size} input "
            f"bytes), {n} requests, ipc\n"
            + format_table(["path", "p50_us", "p99_us"], rows)
            + f"\nratio (a-b)/c at p50: {(a50 - b50) / c50:.2f} (target <= 1.5); the null "
            f"server's (d)/c, the floor of that ratio with this client: {d50 / c50:.2f}")
