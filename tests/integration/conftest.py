"""Integration fixtures: real Servers on ipc:// endpoints running real ONNX Runtime.

Socket files live in short directories under /tmp (`tempfile.mkdtemp(prefix="es")`): pytest's
tmp_path can pass the 107-byte unix socket path limit. One server per module serves the
shipped examples; tests that stop a server or need other limits start their own.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import zmq

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:       # `tests.models` also when pytest runs as a script
    sys.path.insert(0, str(REPO_ROOT))

from edgesched import Client  # noqa: E402
from edgesched.config import Config, parse_config  # noqa: E402
from edgesched.serve.server import Server  # noqa: E402
from tests import models as test_models  # noqa: E402
from tests.models import EXAMPLES  # noqa: E402

CLIENT_TIMEOUT_S = 20.0      # hang protection only: a healthy server answers in milliseconds
EXAMPLE_CONFIG = {           # name -> (slo_ms, priority)
    "convnet": (50.0, "realtime"),
    "depthwise": (100.0, "realtime"),
    "attention": (250.0, "best_effort"),
}


@dataclass(frozen=True)
class ModelFiles:
    """The models tests/models.py builds, once per session."""

    skip_full: Path          # the skip conv net as one file
    skip_sliced: Path        # the same net as a 3-slice directory with manifest.json
    slow: Path               # tens of milliseconds per request on one CPU core
    pair: Path               # two inputs
    big: Path                # a tiny request with a 32 MiB reply


def example_entries() -> list[dict]:
    """Config `models` entries for the three shipped examples."""
    return [{"name": name, "path": str(EXAMPLES / f"{name}.onnx"), "slo_ms": slo_ms,
             "priority": priority} for name, (slo_ms, priority) in EXAMPLE_CONFIG.items()]


def make_config(endpoint: str, models: list[dict], *, streams: int = 2, queue_depth: int = 64,
                max_message_bytes: int | None = None, drain_timeout_s: float = 10.0,
                policy: str = "priority", limits_extra: dict | None = None) -> Config:
    limits: dict = {"queue_depth": queue_depth, **(limits_extra or {})}
    if max_message_bytes is not None:
        limits["max_message_bytes"] = max_message_bytes
    data = {"device": {"backend": "onnxruntime", "streams": streams},
            "server": {"endpoint": endpoint, "drain_timeout_s": drain_timeout_s},
            "scheduler": {"policy": policy}, "limits": limits, "telemetry": "none",
            "models": models}
    return parse_config(data, "<integration test>", REPO_ROOT)


@contextmanager
def socket_dir() -> Iterator[Path]:
    """A fresh short directory for ipc socket files, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="es"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def serving(models: list[dict], **settings) -> Iterator[tuple[Server, str]]:
    """A started Server for `models` (make_config keyword settings), stopped on exit."""
    with socket_dir() as directory:
        endpoint = f"ipc://{directory}/s.sock"
        server = Server(make_config(endpoint, models, **settings)).start()
        try:
            yield server, endpoint
        finally:
            server.stop()


@pytest.fixture(scope="session")
def model_files(tmp_path_factory) -> ModelFiles:
    root = tmp_path_factory.mktemp("models")
    return ModelFiles(test_models.build_skip_convnet(root / "skip_full.onnx"),
                      test_models.build_sliced_skip_convnet(root / "skip_sliced"),
                      test_models.build_slow_model(root / "slow.onnx"),
                      test_models.build_pair_model(root / "pair.onnx"),
                      test_models.build_big_output_model(root / "big.onnx"))


@pytest.fixture(scope="session")
def ort_run() -> Callable[[Path, dict], dict[str, np.ndarray]]:
    """run(path, feeds) -> outputs by name, straight through onnxruntime.InferenceSession."""
    ort = pytest.importorskip("onnxruntime")
    sessions: dict[Path, object] = {}

    def run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if path not in sessions:
            sessions[path] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        session = sessions[path]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds)))
    return run


@pytest.fixture(scope="module")
def example_server(model_files) -> Iterator[tuple[Server, str]]:
    """One server per module: the three shipped examples, the skip conv net whole and sliced,
    and the two-input pair model.

    Tests sharing it must leave it serving: no stop, nothing that depends on an idle server.
    """
    models = example_entries() + [
        {"name": "skip_full", "path": str(model_files.skip_full), "slo_ms": 100},
        {"name": "skip_sliced", "path": str(model_files.skip_sliced), "slo_ms": 100,
         "priority": "realtime"},
        {"name": "pair", "path": str(model_files.pair), "slo_ms": 100},
    ]
    with serving(models, streams=2) as served:
        yield served


@pytest.fixture
def client(example_server) -> Iterator[Client]:
    with Client(example_server[1], timeout_s=CLIENT_TIMEOUT_S) as c:
        yield c


@pytest.fixture
def start_server() -> Iterator[Callable[..., tuple[Server, str]]]:
    """start(models, **make_config settings) -> (server, endpoint); all stopped after the test."""
    with ExitStack() as stack:
        yield lambda models, **settings: stack.enter_context(serving(models, **settings))


class RawSockets:
    """Plain zmq sockets for speaking the wire protocol by hand (malformed messages included)."""

    def __init__(self) -> None:
        self._ctx = zmq.Context()
        self._sockets: list[zmq.Socket] = []

    def open(self, endpoint: str, kind: int = zmq.DEALER) -> zmq.Socket:
        sock = self._ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        self._sockets.append(sock)
        return sock

    @staticmethod
    def receive(sock: zmq.Socket, timeout_s: float = CLIENT_TIMEOUT_S) -> list[bytes]:
        assert sock.poll(int(timeout_s * 1e3)), f"no reply within {timeout_s} s"
        return sock.recv_multipart()

    def close(self) -> None:
        for sock in self._sockets:
            sock.close(linger=0)
        self._ctx.term()


@pytest.fixture
def raw_sockets() -> Iterator[RawSockets]:
    sockets = RawSockets()
    yield sockets
    sockets.close()


@pytest.fixture
def region():
    """A 1 MiB POSIX shared-memory region (shared-memory tensor tests), unlinked afterwards."""
    from multiprocessing import shared_memory
    shm = shared_memory.SharedMemory(create=True, size=1 << 20)
    try:
        yield shm
    finally:
        shm.close()
        shm.unlink()
