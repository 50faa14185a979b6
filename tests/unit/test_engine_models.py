"""Engine.set_models / retire (a reload's model-set changes, on the engine thread): a model
added is served, a retired one is unloaded only after its last request is answered."""
from __future__ import annotations

from tests.engine_harness import Harness
from tests.fakes import model_info


def test_a_retired_model_drains_before_it_is_unloaded():
    a, b = model_info("a"), model_info("b", num_slices=2)
    h = Harness([a, b], durations={("b", 0): None})
    tag = h.submit("b")
    h.step()                                    # b's first slice runs, open-ended
    h.engine.call_soon(lambda: h.engine.retire("b"))
    h.step(0.0)
    assert "b" in h.engine.models and h.fake.unloaded == []     # still running
    h.fake.finish(1, h.fake.clock() + 0.1)
    h.run()
    assert h.answer(tag).result.error is None                   # its request completed
    h.step(0.0)
    assert h.fake.unloaded == ["b"] and list(h.engine.models) == ["a"]
    assert set(h.engine.stats.snapshot()["models"]) == {"a"}
    assert set(h.engine.health.snapshot()) == {"a"}


def test_an_added_model_is_served_with_fresh_statistics():
    a, c = model_info("a"), model_info("c", slo_ms=5.0)
    h = Harness([a])
    h.fake.models["c"] = c
    h.engine.call_soon(lambda: h.engine.set_models({"a": a, "c": c}, fresh=("c",)))
    h.step(0.0)
    tag = h.submit("c")
    h.run()
    assert h.answer(tag).result.error is None
    stats = h.engine.stats.snapshot()["models"]
    assert stats["c"]["completed"] == 1 and stats["c"]["slo_ms"] == 5.0
    h.engine.set_models({"a": a, "c": c}, fresh=("c",))          # as after a warm-up
    assert h.engine.stats.snapshot()["models"]["c"]["completed"] == 0
    assert h.engine.health.snapshot()["c"]["healthy"]


def test_a_switch_sends_new_requests_to_the_new_version_and_unloads_the_old():
    old, new = model_info("b", num_slices=2), model_info("b", num_slices=1, slo_ms=7.0)
    h = Harness([old], durations={("b", 0): None})
    h.fake.models["b@2"] = model_info("b@2", num_slices=1)
    first = h.submit("b")
    h.step()                                  # on the old version, its first slice open-ended
    published = []
    h.engine.call_soon(lambda: h.engine.switch({"b": (new, "b@2")},
                                               lambda: published.append(True)))
    h.step(0.0)
    assert published == [True] and h.engine.models["b"] is new
    second = h.submit("b")
    h.fake.finish(1, h.fake.clock() + 0.1)
    h.run()
    assert h.answer(first).result.error is None and h.answer(second).result.error is None
    keys = {r.launch.request_id: r.launch.model for r in h.fake.runs}
    assert keys == {1: "b", 2: "b@2"}         # each request stayed on one version
    assert len(h.fake.launches_of(1)) == 2 and len(h.fake.launches_of(2)) == 1
    h.step(0.0)
    assert h.fake.unloaded == ["b"]           # the old version, once its request was answered
    assert h.engine.stats.snapshot()["models"]["b"]["slo_ms"] == 7.0
