"""Tensors the wire cannot carry (numpy dtype object: their bytes are pointers) are never
sent: a model declaring one is refused at load, an output that turns out to be one is a typed
ServerError to its client while the server goes on serving, and a client's object array is
refused before anything is sent."""
from __future__ import annotations

import numpy as np
import pytest

from edgesched import Client
from edgesched.errors import InvalidInput, ModelLoadError, ServerError
from edgesched.serve import wire
from tests.integration.conftest import CLIENT_TIMEOUT_S, EXAMPLES, serving
from tests.models import example_input

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
ATTENTION = [{"name": "attention", "path": str(EXAMPLES / "attention.onnx"), "slo_ms": 250}]


def _string_output_model(path):
    from onnx import TensorProto, helper
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.STRING)], "strings",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_a_model_with_a_string_output_is_refused_at_load_in_one_line(tmp_path):
    path = _string_output_model(tmp_path / "strings.onnx")
    with pytest.raises(ModelLoadError, match="tensor\\(string\\)") as refused:
        with serving([{"name": "strings", "path": str(path), "slo_ms": 100}]):
            pass
    assert "\n" not in str(refused.value)


def test_an_object_output_is_a_server_error_and_the_server_goes_on(monkeypatch):
    with serving(ATTENTION) as (server, endpoint), \
            Client(endpoint, timeout_s=CLIENT_TIMEOUT_S) as client:
        fetch = server.backend.fetch
        monkeypatch.setattr(server.backend, "fetch", lambda rid: {
            n: np.array([object()] * 4, dtype=object) for n in fetch(rid)})
        with pytest.raises(ServerError, match="Python objects"):
            client.infer("attention", example_input("attention", 0))
        monkeypatch.setattr(server.backend, "fetch", fetch)
        client.infer("attention", example_input("attention", 1))


def test_a_clients_object_array_is_refused_before_it_is_sent():
    inputs = {"tokens": np.array([object(), object()], dtype=object)}
    with pytest.raises(InvalidInput, match="Python objects"):
        wire.encode_infer(wire.infer_request(1, "attention", inputs))
