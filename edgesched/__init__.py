"""edgesched: several DNNs on one Jetson GPU, in one process, with predictable latency.

`import edgesched` loads only the errors and plain types (and numpy); the client (pyzmq,
msgpack) loads on first use of `edgesched.Client`, so `import edgesched.sched` stays pure.
Device libraries (tensorrt, pycuda, cuda-python, jtop, onnxruntime) are imported by the one
module using each.
"""
from edgesched.errors import (
    ConfigError,
    DeadlineExceeded,
    EdgeschedError,
    InvalidInput,
    MessageTooLarge,
    ModelLoadError,
    ModelUnavailable,
    Overloaded,
    RequestError,
    ServerError,
    ServerUnavailable,
    ShuttingDown,
    UnknownModel,
)
from edgesched.types import Priority, Timings
from edgesched.version import __version__

__all__ = [
    "AsyncClient", "Client", "Pending", "Priority", "Timings", "ConfigError", "DeadlineExceeded",
    "EdgeschedError", "InvalidInput", "MessageTooLarge", "ModelLoadError", "ModelUnavailable",
    "Overloaded", "RequestError", "ServerError", "ServerUnavailable", "ShuttingDown", "UnknownModel",
    "__version__",
]


_CLIENT_NAMES = ("AsyncClient", "Client", "Pending")


def __getattr__(name: str):
    # PEP 562: `from edgesched import Client` imports the client only when asked for.
    if name in _CLIENT_NAMES:
        if name == "AsyncClient":
            from edgesched.serve.async_client import AsyncClient
            return AsyncClient
        from edgesched.serve import client
        return getattr(client, name)
    raise AttributeError(f"module 'edgesched' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
