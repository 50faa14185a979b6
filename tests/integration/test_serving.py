"""A real server answers correctly: every model, every client kind, every query, start and stop."""
from __future__ import annotations

import asyncio
import gc
import threading
import warnings
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

pytest.importorskip("onnxruntime")

import edgesched  # noqa: E402
from edgesched import (  # noqa: E402
    AsyncClient,
    Client,
    EdgeschedError,
    ServerUnavailable,
    ShuttingDown,
)
from edgesched.serve import wire  # noqa: E402
from edgesched.serve.server import Server  # noqa: E402
from tests.models import (  # noqa: E402
    BIG_OUTPUT,
    EXAMPLE_MODELS,
    EXAMPLES,
    SKIP_INPUT,
    SKIP_OUTPUT,
    SLOW_OUTPUT,
    example_input,
    pair_input,
    skip_input,
    slow_input,
)

TOL = {"rtol": 1e-5, "atol": 1e-5}
STOP_JOIN_S = 30.0           # hang protection for a stopping server
REPLY_HANG_S = 10.0          # hang protection for replies due within a drain of under a second


def _close(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, **TOL)


def _mixed_requests(n: int) -> list[tuple[str, dict[str, np.ndarray]]]:
    names = sorted(EXAMPLE_MODELS)
    return [(names[i % 3], example_input(names[i % 3], seed=i % 5)) for i in range(n)]


@pytest.mark.parametrize("name", sorted(EXAMPLE_MODELS))
def test_example_outputs_equal_a_direct_onnxruntime_run(client, ort_run, name):
    output_name, output_shape = EXAMPLE_MODELS[name][2:]
    for seed in range(3):
        inputs = example_input(name, seed)
        outputs = client.infer(name, inputs)
        assert set(outputs) == {output_name}
        assert outputs[output_name].shape == output_shape
        _close(outputs[output_name], ort_run(EXAMPLES / f"{name}.onnx", inputs)[output_name])


def test_sliced_model_serves_the_unsliced_models_outputs(client, ort_run, model_files):
    slices = {m["name"]: m["slices"] for m in client.models()}
    assert (slices["skip_full"], slices["skip_sliced"]) == (1, 3)
    for seed in range(3):
        inputs = skip_input(seed)
        sliced = client.infer("skip_sliced", inputs)[SKIP_OUTPUT[0]]
        whole = client.infer("skip_full", inputs)[SKIP_OUTPUT[0]]
        reference = ort_run(model_files.skip_full, inputs)[SKIP_OUTPUT[0]]
        _close(whole, reference)
        _close(sliced, reference)


def test_two_input_model_outputs_equal_a_direct_onnxruntime_run(client, ort_run, model_files):
    inputs = pair_input(3)
    expected = ort_run(model_files.pair, inputs)["out"]
    np.testing.assert_allclose(expected, inputs["a"] * inputs["b"] + inputs["a"], rtol=1e-6)
    _close(client.infer("pair", inputs)["out"], expected)
    # Inputs are matched by name, not by order.
    _close(client.infer("pair", dict(reversed(inputs.items())))["out"], expected)


def test_models_describes_every_served_model(client):
    models = {m["name"]: m for m in client.models()}
    assert set(models) == set(EXAMPLE_MODELS) | {"skip_full", "skip_sliced", "pair"}
    for name, (input_name, input_shape, output_name, output_shape) in EXAMPLE_MODELS.items():
        m = models[name]
        assert m["inputs"] == [{"name": input_name, "dtype": "float32",
                                "shape": list(input_shape)}]
        assert m["outputs"] == [{"name": output_name, "dtype": "float32",
                                 "shape": list(output_shape)}]
        assert m["slices"] == 1 and m["instances"] == 1
    assert (models["convnet"]["slo_ms"], models["convnet"]["priority"]) == (50, "realtime")
    assert (models["attention"]["slo_ms"], models["attention"]["priority"]) == (250,
                                                                                "best_effort")
    sliced = models["skip_sliced"]
    assert sliced["inputs"] == [{"name": SKIP_INPUT[0], "dtype": "float32",
                                 "shape": list(SKIP_INPUT[1])}]
    assert (sliced["slices"], sliced["priority"], sliced["slo_ms"]) == (3, "realtime", 100)


def test_stats_count_completed_requests_and_report_latency(client):
    before = client.stats()["models"]["depthwise"]["completed"]
    for seed in range(7):
        client.infer("depthwise", example_input("depthwise", seed))
    stats = client.stats()
    model = stats["models"]["depthwise"]
    assert model["completed"] == before + 7
    assert 0 < model["p50_ms"] <= model["p99_ms"]
    assert 0.0 <= model["slo_attainment"] <= 1.0
    assert model["queue_depth"] == 0 and model["slo_ms"] == 100
    assert set(stats["models"]) == set(EXAMPLE_MODELS) | {"skip_full", "skip_sliced", "pair"}
    assert stats["backend"] == "onnxruntime" and stats["policy"] == "priority"
    assert stats["streams"] == 2 and stats["uptime_s"] > 0


def test_ping_answers_with_version_and_pid(client, example_server, raw_sockets):
    assert client.ping() > 0
    sock = raw_sockets.open(example_server[1])
    sock.send_multipart([wire.PING, wire.pack_header({"id": 41})])
    kind, header = raw_sockets.receive(sock)
    reply = msgpack.unpackb(header)
    assert kind == wire.PING
    assert (reply["v"], reply["id"], reply["version"]) == (1, 41, edgesched.__version__)
    assert isinstance(reply["pid"], int)


def test_async_client_gets_the_same_results_as_client(client, example_server):
    requests = _mixed_requests(50)
    expected = [client.infer(name, inputs) for name, inputs in requests]

    async def all_at_once() -> list[dict[str, np.ndarray]]:
        async with AsyncClient(example_server[1], timeout_s=20.0) as aclient:
            assert await aclient.ping() > 0
            results = await asyncio.gather(*(aclient.infer(name, inputs)
                                             for name, inputs in requests))
            assert {m["name"] for m in await aclient.models()} >= set(EXAMPLE_MODELS)
            assert (await aclient.stats())["models"]["convnet"]["completed"] > 0
            return results

    for got, want in zip(asyncio.run(all_at_once()), expected, strict=True):
        assert set(got) == set(want)
        for key in want:
            _close(got[key], want[key])


def test_pipelined_requests_are_collected_in_any_order(client, ort_run):
    requests = _mixed_requests(50)
    pending = [client.submit(name, inputs) for name, inputs in requests]
    # Collect newest first: earlier replies wait in the client's stash meanwhile.
    results = [p.result() for p in reversed(pending)][::-1]
    assert len({p.id for p in pending}) == 50
    for (name, inputs), outputs in zip(requests, results):
        output_name = EXAMPLE_MODELS[name][2]
        _close(outputs[output_name], ort_run(EXAMPLES / f"{name}.onnx", inputs)[output_name])


def test_req_socket_peer_gets_a_correct_reply(example_server, raw_sockets, ort_run):
    sock = raw_sockets.open(example_server[1], zmq.REQ)
    inputs = example_input("convnet", 3)
    sock.send_multipart(wire.encode(wire.INFER, {"id": 7, "model": "convnet"}, inputs),
                        copy=False)
    reply = wire.decode_reply(raw_sockets.receive(sock))
    assert (reply.kind, reply.id) == (wire.INFER, 7)
    assert set(reply.header["timings"]) == {"queue_ms", "device_ms", "total_ms"}
    _close(reply.tensors["logits"], ort_run(EXAMPLES / "convnet.onnx", inputs)["logits"])
    sock.send_multipart([wire.STATS, wire.pack_header({"id": 8})])      # REQ: one at a time
    reply = wire.decode_reply(raw_sockets.receive(sock))
    assert (reply.kind, reply.id) == (wire.STATS, 8)


def _stop_in_background(server: Server) -> threading.Thread:
    thread = threading.Thread(target=server.stop, name="test-stop")
    thread.start()
    return thread


def test_stop_answers_every_request_in_flight(start_server, model_files, ort_run):
    # One stream and a slow model: 40 requests need far longer than the drain timeout.
    server, endpoint = start_server([{"name": "slow", "path": str(model_files.slow),
                                      "slo_ms": 1000}],
                                    streams=1, queue_depth=100, drain_timeout_s=0.3)
    inputs = slow_input(0)
    expected = ort_run(model_files.slow, inputs)[SLOW_OUTPUT[0]]
    with Client(endpoint, timeout_s=REPLY_HANG_S) as c:
        pending = [c.submit("slow", inputs) for _ in range(40)]
        c.ping()                      # the server has read every request before this one
        stopper = _stop_in_background(server)
        outcomes = ""                 # one letter per request: . result, s ShuttingDown, X none
        for p in pending:
            try:
                _close(p.result()[SLOW_OUTPUT[0]], expected)
                outcomes += "."
            except ShuttingDown as e:
                assert "\n" not in str(e)
                outcomes += "s"
            except ServerUnavailable:
                outcomes += "X"
        stopper.join(STOP_JOIN_S)
    assert not stopper.is_alive(), "stop() did not return"
    assert "X" not in outcomes, f"requests left without a reply: {outcomes}"
    # The drain timeout cut the work short: the rest were answered ShuttingDown, not dropped.
    assert "s" in outcomes
    assert not Path(endpoint[len("ipc://"):]).exists()


@pytest.mark.parametrize("requests", [1, 4])
def test_stop_delivers_the_last_replies_before_closing(start_server, model_files, requests):
    # 32 MiB replies take a moment to write out: closing the socket must not discard them.
    server, endpoint = start_server([{"name": "big", "path": str(model_files.big),
                                      "slo_ms": 1000}], streams=1, drain_timeout_s=30.0)
    with Client(endpoint, timeout_s=REPLY_HANG_S) as c:
        pending = [c.submit("big", {"x": np.full((1, 1), i + 1, np.float32)})
                   for i in range(requests)]
        c.ping()                      # all read and accepted: each must now get its result
        stopper = _stop_in_background(server)
        outcomes = ""
        for i, p in enumerate(pending):
            try:
                y = p.result()[BIG_OUTPUT[0]]
                assert y.shape == BIG_OUTPUT[1] and (y == i + 1).all()
                outcomes += "."
            except ServerUnavailable:
                outcomes += "X"
        stopper.join(STOP_JOIN_S)
    assert not stopper.is_alive(), "stop() did not return"
    assert outcomes == "." * requests, f"requests left without a reply: {outcomes}"


class _LaunchGate:
    """Holds every launch the engine makes until released, then hands them to the backend.

    Stands in for a device busy with earlier work: requests the server has accepted wait in the
    engine meanwhile, queued or launched but not running.
    """

    def __init__(self, server: Server):
        self.released = threading.Event()
        self._lock = threading.Lock()
        self._held: list = []
        self._launch = server.backend.launch
        server.backend.launch = self._gated_launch

    def _gated_launch(self, launch) -> None:
        with self._lock:
            if not self.released.is_set():
                return self._held.append(launch)
        self._launch(launch)

    def release(self) -> None:
        with self._lock:
            self.released.set()
            held, self._held = self._held, []
        for launch in held:           # the backend's launch is a thread-safe queue put
            self._launch(launch)


def _probe_until_shutting_down(sock: zmq.Socket, x: np.ndarray) -> tuple[list[int], list[int]]:
    """Send requests until one is refused with SHUTTING_DOWN: (ids accepted, ids refused).

    While the engine is held no accepted request can finish, so every reply meanwhile is a
    refusal; it may come late, after more probes were sent (those are refused too).
    """
    sent: list[int] = []
    for request_id in range(5000, 5000 + 1000):
        sock.send_multipart(wire.encode(wire.INFER, {"id": request_id, "model": "slow"},
                                        {"x": x}), copy=False)
        sent.append(request_id)
        if sock.poll(20):
            reply = wire.decode_reply(sock.recv_multipart())
            assert reply.header.get("code") == "SHUTTING_DOWN" and reply.id in sent, reply.header
            return ([i for i in sent if i < reply.id],
                    [i for i in sent if i > reply.id])     # the one answered is not included
    raise AssertionError("stop() never closed intake")


def test_stop_finishes_accepted_requests_within_the_drain_timeout(start_server, model_files,
                                                                   ort_run, raw_sockets):
    server, endpoint = start_server([{"name": "slow", "path": str(model_files.slow),
                                      "slo_ms": 1000}], streams=1, queue_depth=1000,
                                    drain_timeout_s=60.0)
    inputs = [slow_input(seed) for seed in range(6)]
    expected = [ort_run(model_files.slow, x)[SLOW_OUTPUT[0]] for x in inputs]
    probe = raw_sockets.open(endpoint)
    gate = _LaunchGate(server)
    try:
        with Client(endpoint, timeout_s=STOP_JOIN_S) as c:
            pending = [c.submit("slow", x) for x in inputs]
            c.ping()                  # all 6 were read, checked and are in the engine
            stopper = _stop_in_background(server)
            accepted, refused = _probe_until_shutting_down(probe, inputs[0]["x"])
            gate.release()            # intake is closed: now let the device run them
            outcomes = []
            for p, want in zip(pending, expected):
                try:
                    _close(p.result()[SLOW_OUTPUT[0]], want)
                    outcomes.append("ok")
                except ShuttingDown as e:
                    outcomes.append(f"ShuttingDown: {e}")
            for _ in accepted + refused:
                reply = wire.decode_reply(raw_sockets.receive(probe, STOP_JOIN_S))
                want = (wire.INFER, None) if reply.id in accepted else (wire.ERROR,
                                                                        "SHUTTING_DOWN")
                assert reply.id in accepted + refused, reply.header
                assert (reply.kind, reply.header.get("code")) == want, reply.header
            stopper.join(STOP_JOIN_S)
    finally:
        gate.release()
    assert not stopper.is_alive(), "stop() did not return"
    # 60 s of drain time is plenty: requests accepted before stop() must run, not be refused.
    assert outcomes == ["ok"] * 6


def test_after_stop_the_socket_file_is_gone_and_the_endpoint_can_be_reused(start_server):
    server, endpoint = start_server([{"name": "attention",
                                      "path": str(EXAMPLES / "attention.onnx"), "slo_ms": 100}])
    path = Path(endpoint[len("ipc://"):])
    assert path.exists()
    server.stop()
    assert not path.exists()
    server.stop()                     # idempotent
    with Server(server.config) as again, Client(endpoint, timeout_s=20.0) as c:
        assert again.endpoint == endpoint
        assert c.ping() > 0
        assert c.infer("attention", example_input("attention", 0))["features"].shape == (1, 32, 64)
    assert not path.exists()


def _refuse_second_server(server: Server) -> EdgeschedError:
    second = Server(server.config)
    with pytest.raises(EdgeschedError) as refused:
        second.start()
    return refused.value


def test_second_server_on_a_live_endpoint_is_refused(example_server, client):
    server, endpoint = example_server
    error = _refuse_second_server(server)
    assert endpoint in str(error) and "\n" not in str(error)
    assert client.ping() > 0          # the first server still owns the endpoint
    assert client.infer("attention", example_input("attention", 1))["features"].shape \
        == (1, 32, 64)
    with warnings.catch_warnings():   # a leak here is the next test's finding, not this one's
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def test_a_refused_server_releases_its_threads_and_zmq_context(example_server):
    threads_before = set(threading.enumerate())
    _refuse_second_server(example_server[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    leaked = [t.name for t in set(threading.enumerate()) - threads_before]
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaked, f"threads left running by the refused Server: {leaked}"
    assert not unclosed, f"resources left open by the refused Server: {unclosed}"


def test_client_without_a_server_raises_server_unavailable(short_dir):
    endpoint = f"ipc://{short_dir}/nobody.sock"
    with Client(endpoint, timeout_s=0.3) as c:
        with pytest.raises(ServerUnavailable) as e:
            c.infer("attention", example_input("attention", 0))
        assert endpoint in str(e.value) and "\n" not in str(e.value)
        with pytest.raises(ServerUnavailable):
            c.ping()


def test_async_client_without_a_server_raises_server_unavailable(short_dir):
    async def ping() -> None:
        async with AsyncClient(f"ipc://{short_dir}/nobody.sock", timeout_s=0.3) as c:
            await c.ping()

    with pytest.raises(ServerUnavailable):
        asyncio.run(ping())


def test_big_endian_inputs_get_the_same_outputs_as_little_endian(client, ort_run):
    inputs = example_input("convnet", seed=1)
    big = {name: array.astype(array.dtype.newbyteorder(">")) for name, array in inputs.items()}
    expected = ort_run(EXAMPLES / "convnet.onnx", inputs)
    for name, array in client.infer("convnet", big).items():
        _close(array, expected[name])
