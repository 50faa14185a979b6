"""`edgesched bench frames`: camera frames through the server by copy and by shared memory.

uint8 frames of 640x480, 1920x1080 and 3840x2160 (RGB), and a 64-byte request, through a small
model (it reads an 8x8 corner: its time does not grow with the frame) served in its own
process over ipc, in interleaved rounds:
  copy   the frame as a tensor frame of the INFER message,
  shm    the frame in a registered shared-memory region, sent by reference,
  echo   a raw pyzmq DEALER -> ROUTER echo of the copy path's frames (the transport alone),
  model  the model called in-process with ONNX Runtime (what the server cannot avoid).
Transport overhead = round trip - model, at p50. Target: by shared memory, a 1080p frame's
overhead within 1.5x of the 64-byte request's.
"""
from __future__ import annotations

import multiprocessing
import tempfile
from pathlib import Path

import numpy as np

from edgesched.commands.bench import (_Echo, _end, _InProcess, _percentiles_us, _serve, _start,
                                      _time)
from edgesched.commands.table import format_table

SIZES = (("64 B", (4, 16, 1)), ("640x480", (480, 640, 3)), ("1080p", (1080, 1920, 3)),
         ("4K", (2160, 3840, 3)))


def _model(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    consts = {"starts": [0, 0, 0], "ends": [8, 8, 3], "axes": [0, 1, 2]}
    nodes = [helper.make_node("Slice", ["image", "starts", "ends", "axes"], ["corner"]),
             helper.make_node("Cast", ["corner"], ["cornerf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["cornerf"], ["mean"], keepdims=0)]
    graph = helper.make_graph(
        nodes, "frames", [helper.make_tensor_value_info("image", TensorProto.UINT8,
                                                        ["H", "W", "C"])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, [])],
        [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def bench_frames(n: int = 200, warmup: int = 20) -> str:
    from multiprocessing import shared_memory

    from edgesched.config import parse_config
    from edgesched.serve import wire
    from edgesched.serve.client import Client
    rows, overhead = [], {}
    with tempfile.TemporaryDirectory(prefix="edgesched-frames-") as tmp:
        path = _model(Path(tmp) / "frames.onnx")
        config = parse_config({"device": {"backend": "onnxruntime", "streams": 1},
                               "telemetry": "none", "limits": {"max_message_bytes": 32 << 20},
                               "models": [{"name": "frames", "path": str(path),
                                           "slo_ms": 1000}]}, "<bench frames>", Path(tmp))
        endpoint = f"ipc://{tmp}/server.sock"
        stop = multiprocessing.get_context("spawn").Event()
        proc = _start(_serve, (config, endpoint, stop), "benchmark server")
        shm = shared_memory.SharedMemory(create=True, size=2160 * 3840 * 3)
        try:
            with Client(endpoint, timeout_s=30.0) as client:
                region = client.register(shm)
                for label, shape in SIZES:
                    frame = np.random.default_rng(0).integers(0, 255, shape, np.uint8)
                    shared = client.shared_array(region, shape, np.uint8)
                    shared[:] = frame
                    echo = _Echo(f"ipc://{tmp}/echo-{len(rows)}.sock", wire.encode_infer(
                        wire.infer_request(1, "frames", {"image": frame})))
                    paths = {"copy": lambda f=frame: client.infer("frames", {"image": f}),
                             "shm": lambda f=shared: client.infer("frames", {"image": f}),
                             "echo": echo,
                             "model": _InProcess(path, {"image": frame}, 1)}
                    samples: dict[str, list] = {k: [] for k in paths}
                    try:
                        for fn in paths.values():
                            _time(fn, 0, warmup)
                        for _ in range(10):          # interleaved rounds
                            for key, fn in paths.items():
                                samples[key].extend(_time(fn, max(n // 10, 1), 0))
                    finally:
                        echo.close()
                    p = {k: _percentiles_us(v) for k, v in samples.items()}
                    mb = frame.nbytes / 1e6
                    for key in ("copy", "shm", "echo"):
                        over = p[key][0] - (0.0 if key == "echo" else p["model"][0])
                        overhead[(label, key)] = over
                        rows.append([label, key, p[key][0], p[key][1], over,
                                     mb / (p[key][0] / 1e6)])
                    rows.append([label, "model", p["model"][0], p["model"][1], None, None])
                    del paths, fn, shared           # views of the region: shm.close() needs none
                client.unregister(shm)
        finally:
            shm.close()
            shm.unlink()
            stop.set()
            _end(proc, 30)
    ratio = overhead[("1080p", "shm")] / overhead[("64 B", "shm")]
    return ("edgesched bench frames: uint8 frames through a small model, ipc, "
            f"{n} requests each\n"
            + format_table(["frame", "path", "p50_us", "p99_us", "overhead_us", "MB_per_s"], rows)
            + f"\nshm overhead 1080p / 64 B at p50: {ratio:.2f} (target <= 1.5)")
