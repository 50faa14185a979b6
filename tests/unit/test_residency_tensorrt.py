"""The memory budget (serve/residency.py) on the TensorRT backend, against the CUDA fakes:
footprints from engine sizes, context scratch and I/O; the budget kept on the fake device's own
count of what TensorRT holds; least-recently-used eviction of idle best-effort models only;
reloads from the engine bytes kept in host RAM (the files may be gone); a request that cannot
wait for its model is answered ModelUnavailable; pinned models that do not fit are refused."""
from __future__ import annotations

import numpy as np
import pytest

from edgesched.errors import ConfigError, ModelUnavailable
from edgesched.serve.residency import MIB
from edgesched.types import Priority
from tests.unit.residency_helpers import Rig, entry, ok
from tests.unit.tensorrt_helpers import inputs, two_slice_model

RT = Priority.REALTIME


def _footprint(cuda, tmp_path) -> int:
    """One two-slice model's footprint (every model here is the same size)."""
    backend = cuda.make(streams=1)
    backend.load("probe", two_slice_model(tmp_path / "probe"), 1)
    try:
        return backend.footprint_bytes("probe")
    finally:
        backend.unload("probe")


def _x(k: int) -> dict:
    return {"x": inputs(k + 1)[k]}


def test_the_footprint_is_engines_scratch_and_io(cuda, tmp_path):
    gpu = cuda.install(integrated=False).gpu
    backend = cuda.make(streams=1)
    model = two_slice_model(tmp_path / "m")
    held = gpu.trt_device_bytes
    backend.load("m", model, 2)
    engines = sum(p.stat().st_size for p in model.glob("*.engine"))
    assert gpu.trt_device_bytes - held == engines + 2 * 2 * 65536   # weights + 2x2 contexts
    io = 2 * (3 * 16 + 2 * 16)        # x, h, y: 1x4 float32; x and y staged too (discrete)
    assert backend.footprint_bytes("m") == engines + 2 * 2 * 65536 + io


def test_lru_eviction_keeps_the_pinned_model_and_reloads_from_ram(cuda, tmp_path):
    gpu = cuda.install().gpu
    size = _footprint(cuda, tmp_path)
    backend = cuda.make(streams=2)
    dirs = {n: two_slice_model(tmp_path / n) for n in ("rt", "a", "b", "c")}
    rig = Rig(backend, [entry("rt", dirs["rt"], RT)] + [entry(n, dirs[n]) for n in "abc"],
              budget_mb=3.5 * size / MIB)          # room for the pinned one and two more
    budget = rig.residency.budget_bytes
    rig.after_step = lambda: assert_within(gpu, budget)
    assert [rig.state(n) for n in ("rt", "a", "b", "c")] == \
        ["resident", "resident", "resident", "evicted"]     # c loaded once, to learn it
    assert_within(gpu, budget)
    rig.submit("a", 1, _x(1))                       # a is used: b is now the oldest
    np.testing.assert_array_equal(ok(rig.wait(1)[0])["y"], _x(1)["x"] + 11)
    rig.submit("c", 2, _x(2))
    np.testing.assert_array_equal(ok(rig.wait(2)[0])["y"], _x(2)["x"] + 11)
    assert [rig.state(n) for n in ("rt", "a", "b", "c")] == \
        ["resident", "resident", "evicted", "resident"]
    for engine in dirs["b"].glob("*.engine"):       # b's engines come back from host RAM
        engine.unlink()
    reads = rig.residency.blobs.disk_reads
    rig.submit("b", 3, _x(3))
    np.testing.assert_array_equal(ok(rig.wait(3)[0])["y"], _x(3)["x"] + 11)
    assert rig.residency.blobs.disk_reads == reads
    b = rig.residency.of("b")
    assert (b["state"], b["loads"], b["evictions"], b["last_load_from"]) == \
        ("resident", 2, 1, "ram")
    assert rig.state("a") == "evicted"              # a was used before c
    assert rig.residency.of("rt")["evictions"] == 0 and rig.state("rt") == "resident"
    assert_within(gpu, budget)


def test_a_model_in_flight_is_not_evicted_and_the_waiter_gets_model_unavailable(cuda, tmp_path):
    gpu = cuda.install().gpu
    size = _footprint(cuda, tmp_path)
    backend = cuda.make(streams=2)
    rig = Rig(backend, [entry("rt", two_slice_model(tmp_path / "rt"), RT),
                        entry("a", two_slice_model(tmp_path / "a")),
                        entry("b", two_slice_model(tmp_path / "b"))],
              budget_mb=2.5 * size / MIB)           # the pinned one and one more
    assert (rig.state("a"), rig.state("b")) == ("resident", "evicted")
    gpu.hold()                                      # a's request runs until release()
    rig.submit("a", "running", _x(1))
    while not gpu.named("execute_async_v3"):
        rig.engine.step(0.005)
    rig.submit("b", "late", _x(2), deadline_s=0.05)
    (late,) = rig.wait("late")                      # a cannot go while its request runs
    assert isinstance(late.error, ModelUnavailable) and "deadline" in str(late.error)
    assert rig.state("a") == "resident" and rig.residency.of("a")["evictions"] == 0
    gpu.release()
    np.testing.assert_array_equal(ok(rig.wait("running")[0])["y"], _x(1)["x"] + 11)
    rig.submit("b", "now", _x(2))                   # a is idle now: it makes room
    np.testing.assert_array_equal(ok(rig.wait("now")[0])["y"], _x(2)["x"] + 11)
    assert (rig.state("a"), rig.state("b")) == ("evicted", "resident")


def test_pinned_models_over_the_budget_are_refused_and_nothing_stays_loaded(cuda, tmp_path):
    gpu = cuda.install().gpu
    size = _footprint(cuda, tmp_path)
    backend = cuda.make(streams=1)
    with pytest.raises(ConfigError) as refused:
        Rig(backend, [entry("rt", two_slice_model(tmp_path / "rt"), RT),
                      entry("a", two_slice_model(tmp_path / "a"))], budget_mb=0.5 * size / MIB)
    text = str(refused.value)
    assert "\n" not in text and "limits.device_memory_mb" in text and "rt (" in text
    del refused
    assert not [k for k in gpu.trt_live if k[0] != "runtime"]


def assert_within(gpu, budget: int) -> None:
    assert gpu.trt_device_bytes <= budget, f"{gpu.trt_device_bytes} > budget {budget}"


def test_a_model_that_can_never_fit_beside_the_pinned_ones_is_refused_at_once(cuda, tmp_path):
    cuda.install()
    size = _footprint(cuda, tmp_path)
    backend = cuda.make(streams=1)
    rig = Rig(backend, [entry("rt", two_slice_model(tmp_path / "rt"), RT),
                        entry("a", two_slice_model(tmp_path / "a"))], budget_mb=1.5 * size / MIB)
    assert rig.state("a") == "evicted"
    rig.submit("a", 1, _x(1))                      # no deadline: it still does not wait 30 s
    (refused,) = rig.wait(1)
    assert isinstance(refused.error, ModelUnavailable) and "never fit" in str(refused.error)
    assert rig.residency.of("a")["loads"] == 1     # not loaded again
