"""Faults on a real server over ONNX Runtime: a model that raises, a slice that hangs, clients
that vanish mid-request. Each fails only what it must, and every other model keeps serving."""
from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import pytest

from edgesched import Client, InvalidInput, ModelUnavailable, ServerError
from edgesched.backends import create_backend
from edgesched.serve.server import Server
from tests import models as test_models
from tests.faults import FaultyBackend
from tests.integration.conftest import CLIENT_TIMEOUT_S, make_config
from tests.models import example_input, slow_input

pytest.importorskip("onnxruntime")
RETRY_S = 0.2          # unhealthy_retry_s: short, so recovery happens within a test
GOOD, BAD = np.arange(4, dtype=np.float32), np.arange(3, dtype=np.float32)


@pytest.fixture(scope="module")
def fragile(tmp_path_factory):
    return test_models.build_fragile_model(tmp_path_factory.mktemp("fragile") / "fragile.onnx")


@contextmanager
def faulty_server(short_dir, models, fault=None, **limits):
    config = make_config(f"ipc://{short_dir}/f.sock", models, streams=2,
                         limits_extra={"unhealthy_retry_s": RETRY_S, **limits})
    backend = create_backend(config.device.backend, config.device.streams)
    if fault is not None:
        backend = FaultyBackend(backend, fault)
    server = Server(config, backend=backend).start()
    try:
        with Client(server.endpoint, timeout_s=CLIENT_TIMEOUT_S) as client:
            yield server, client
    finally:
        server.stop()


def health(client: Client, model: str) -> tuple[bool, bool]:
    """(healthy in STATS, healthy in MODELS)."""
    stats = client.stats()["models"][model]["health"]["healthy"]
    listed = next(m["healthy"] for m in client.models() if m["name"] == model)
    return stats, listed


def until(condition, what: str, limit_s: float = CLIENT_TIMEOUT_S):
    """Poll `condition` until it returns something true (hang protection, not a speed test)."""
    give_up = time.monotonic() + limit_s
    while time.monotonic() < give_up:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"not within {limit_s} s: {what}")


def test_a_model_that_keeps_failing_is_marked_unhealthy_and_recovers(short_dir, fragile,
                                                                     ort_run, model_files):
    models = [{"name": "fragile", "path": str(fragile), "slo_ms": 100},
              {"name": "skip", "path": str(model_files.skip_full), "slo_ms": 100}]
    broken = {"on": False}

    def fault(launch):                      # a device fault: counts whatever the shapes
        return "raise" if launch.model == "fragile" and broken["on"] else None
    with faulty_server(short_dir, models, fault, unhealthy_after=3) as (server, client):
        np.testing.assert_array_equal(client.infer("fragile", {"x": GOOD})["y"],
                                      GOOD.reshape(2, 2))
        broken["on"] = True
        for _ in range(3):
            with pytest.raises(ServerError, match="fragile.*slice 0 failed"):
                client.infer("fragile", {"x": GOOD})
        broken["on"] = False
        assert health(client, "fragile") == (False, False)
        assert health(client, "skip") == (True, True)
        snap = client.stats()["models"]["fragile"]["health"]
        assert snap["consecutive_failures"] == 3 and "injected fault" in snap["last_error"]
        # The other model is served, with the right numbers, while this one is unhealthy.
        feed = test_models.skip_input(1)
        np.testing.assert_allclose(client.infer("skip", feed)["logits"],
                                   ort_run(model_files.skip_full, feed)["logits"], rtol=1e-5)
        # Refused without running, until a probe is let through after RETRY_S; the probe
        # succeeds and the model is healthy again.
        refused = 0

        def probe():
            nonlocal refused
            try:
                return client.infer("fragile", {"x": GOOD})
            except ModelUnavailable:
                refused += 1
                return None
        np.testing.assert_array_equal(until(probe, "a probe request")["y"], GOOD.reshape(2, 2))
        assert refused >= 1
        assert health(client, "fragile") == (True, True)
        counts = client.stats()["models"]["fragile"]
        assert counts["completed"] == 2 and counts["failed"] == 3 + refused


def test_a_client_whose_inputs_the_model_rejects_never_takes_it_offline(short_dir, fragile):
    """Real ONNX Runtime errors (Reshape of 3 into 2x2) on shapes the model never ran: each is
    answered InvalidInput to that client, from the very first request on, and 50 of them leave
    the model serving everyone else."""
    models = [{"name": "fragile", "path": str(fragile), "slo_ms": 100}]
    with faulty_server(short_dir, models, unhealthy_after=3) as (server, bad_client):
        with Client(server.endpoint, timeout_s=CLIENT_TIMEOUT_S) as good_client:
            for i in range(50):
                with pytest.raises(InvalidInput, match="fragile.*never run.*Reshape"):
                    bad_client.infer("fragile", {"x": BAD})
                if i % 10 == 0:
                    np.testing.assert_array_equal(
                        good_client.infer("fragile", {"x": GOOD})["y"], GOOD.reshape(2, 2))
            assert health(good_client, "fragile") == (True, True)
            stats = good_client.stats()["models"]["fragile"]
            assert stats["health"]["rejections"] == 50 and stats["invalid"] == 50
            assert stats["health"]["consecutive_failures"] == 0 and stats["completed"] == 5


def test_a_hung_slice_fails_its_request_at_the_launch_timeout_and_others_keep_serving(
        short_dir, model_files, ort_run):
    hang = {"on": True}

    def fault(launch):
        return "hang" if launch.model == "stuck" and hang["on"] else None
    models = [{"name": "stuck", "path": str(model_files.skip_full), "slo_ms": 100},
              {"name": "convnet", "path": str(test_models.EXAMPLES / "convnet.onnx"),
               "slo_ms": 100, "priority": "realtime"}]
    with faulty_server(short_dir, models, fault, launch_timeout_s=0.3) as (server, client):
        pending = client.submit("stuck", test_models.skip_input(2))
        feed = example_input("convnet", 3)
        reference = ort_run(test_models.EXAMPLES / "convnet.onnx", feed)["logits"]
        for _ in range(5):        # served on the other stream while the slice hangs
            np.testing.assert_allclose(client.infer("convnet", feed)["logits"], reference,
                                       rtol=1e-5)
        with pytest.raises(ServerError, match="launch timeout"):
            pending.result()
        stats = client.stats()
        assert stats["stuck_streams"] == 1
        assert stats["models"]["stuck"]["health"]["timeouts"] == 1
        assert health(client, "stuck") == (False, False)
        for _ in range(5):
            np.testing.assert_allclose(client.infer("convnet", feed)["logits"], reference,
                                       rtol=1e-5)
        # While its slice still hangs the model gets no probe, even past the retry interval.
        time.sleep(2 * RETRY_S)
        with pytest.raises(ModelUnavailable):
            client.infer("stuck", test_models.skip_input(2))
        assert len(server.backend.injected) == 1

        hang["on"] = False
        assert server.backend.end_hangs() == 1
        until(lambda: client.stats()["stuck_streams"] == 0, "the stream to be freed")
        feed = test_models.skip_input(4)
        out = until(lambda: _try(client, "stuck", feed), "the probe to succeed")
        np.testing.assert_allclose(out["logits"], ort_run(model_files.skip_full, feed)["logits"],
                                   rtol=1e-5)
        assert health(client, "stuck") == (True, True)
        assert server.backend.inner._tensors == {}          # the hung request was released


def _try(client, model, feed):
    try:
        return client.infer(model, feed)
    except ModelUnavailable:
        return None


def test_a_raising_slice_fails_only_its_own_request(short_dir, model_files, ort_run):
    def fault(launch):
        return "raise" if launch.request_id % 2 == 0 else None
    models = [{"name": "skip", "path": str(model_files.skip_sliced), "slo_ms": 1000}]
    with faulty_server(short_dir, models, fault, unhealthy_after=100) as (server, client):
        feeds = [test_models.skip_input(i) for i in range(20)]
        pending = [client.submit("skip", feed) for feed in feeds]
        ok = failed = 0
        for feed, p in zip(feeds, pending):
            try:
                out = p.result()
            except ServerError as e:
                assert "injected fault" in str(e)
                failed += 1
                continue
            ok += 1
            np.testing.assert_allclose(out["logits"],
                                       ort_run(model_files.skip_full, feed)["logits"], rtol=1e-5)
        assert ok >= 1 and failed >= 1 and ok + failed == 20
        assert failed == len(server.backend.injected)
        until(lambda: server.engine.idle, "the engine to go idle")
        assert server.backend.inner._tensors == {}


def test_clients_that_vanish_mid_request_leave_no_state_behind(start_server, model_files):
    server, endpoint = start_server(
        [{"name": "slow", "path": str(model_files.slow), "slo_ms": 10_000}], streams=1)
    sent = 0
    for i in range(8):
        client = Client(endpoint, timeout_s=CLIENT_TIMEOUT_S)
        for j in range(3):
            client.submit("slow", slow_input(i * 3 + j))
            sent += 1
        client.ping()        # answered at once, in order: the server has read the 3 requests
        client.close()       # gone before any reply
    # (The engine is idle once the last request left its state; its buffers are freed a
    # moment later in the same step, on the serve thread.)
    until(lambda: server.engine.idle and not server.backend._tensors,
          "the engine to finish the orphaned requests and free their buffers")
    counts = server.stats.snapshot()["models"]["slow"]
    assert counts["completed"] + counts["failed"] + counts["expired"] == sent
    assert server.engine.state.requests == {} and server.backend._tensors == {}
    # Replies to the vanished clients are counted, not silently lost. (libzmq may hand a
    # reply to a peer's pipe just before it notices the peer left: those few are not seen.)
    until(lambda: server.undeliverable >= 1, "undeliverable replies to be counted")
    assert server.undeliverable <= sent
    with Client(endpoint, timeout_s=CLIENT_TIMEOUT_S) as client:
        assert client.infer("slow", slow_input(99))["y"].shape == test_models.SLOW_OUTPUT[1]
