"""Hand-built SliceWork jobs and launch/poll helpers, shared by test_sim_backend_*.py.

Jobs are built by hand as SliceWork so every expectation follows from the documented model:
SMs shared (stream 0 favoured), DRAM bandwidth shared by all, a cache/EMC term, noise.
"""
from __future__ import annotations

from pathlib import Path

from edgesched.backends.sim import SimBackend
from edgesched.backends.sim_device import SliceWork
from edgesched.types import Completion, Launch, TensorSpec

ROOT = Path(__file__).resolve().parents[2]
# 1 ms alone each. Compute-bound: fills the SMs, little traffic. Memory-bound: most of the
# bandwidth, few SMs. (launch, compute, memory, sm, mem, kernels, sm_peak, mem_peak)
COMPUTE = SliceWork(10.0, 990.0, 0.0, 1.0, 0.05, 1, 1.0, 0.0)
MEMORY = SliceWork(10.0, 0.0, 990.0, 0.2, 0.8, 1, 0.0, 0.9)
TINY = SliceWork(10.0, 90.0, 0.0, 0.1, 0.01, 1, 0.1, 0.0)        # 0.1 ms, 10% of the SMs
OUT = TensorSpec("y", "float32", (None, 3))
IN = TensorSpec("x", "float32", (1, 4))


def make(streams: int = 4, *, seed: int = 0, noise_sigma: float = 0.0,
         **kw) -> SimBackend:
    backend = SimBackend("orin-nx", streams, seed=seed, noise_sigma=noise_sigma, **kw)
    for name, work in (("compute", COMPUTE), ("memory", MEMORY), ("tiny", TINY)):
        backend.load_work(name, [work], (IN,), (OUT,))
    backend.load_work("two", [COMPUTE, MEMORY], (IN,), (OUT,))
    return backend


def start(backend: SimBackend, rid: int, model: str, stream: int, index: int = 0) -> Launch:
    launch = Launch(rid, model, index, stream)
    if index == 0:
        backend.stage(rid, model, {})
    backend.launch(launch)
    return launch


def drain(backend: SimBackend, polls: int = 1000, timeout_s: float = 1.0
          ) -> dict[int, Completion]:
    """Poll until no launch is running; request id -> its completion."""
    done: dict[int, Completion] = {}
    for _ in range(polls):
        if not any(j.launch for j in backend._jobs.values()):
            return done
        for c in backend.poll(timeout_s):
            assert c.launch.request_id not in done
            done[c.launch.request_id] = c
    raise AssertionError("launches still running after many polls")


def seconds(c: Completion) -> float:
    return c.finished_s - c.started_s


def pair(a: str, b: str, streams: tuple[int, int] = (1, 2)) -> tuple[float, float]:
    """Slowdowns of a and b started together (each over its own solo time)."""
    backend = make()
    start(backend, 1, a, streams[0])
    start(backend, 2, b, streams[1])
    done = drain(backend)
    solo = {"compute": COMPUTE, "memory": MEMORY, "tiny": TINY}
    return (seconds(done[1]) / (solo[a].duration_us / 1e6),
            seconds(done[2]) / (solo[b].duration_us / 1e6))
