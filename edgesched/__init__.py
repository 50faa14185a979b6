"""edgesched: several DNNs on one Jetson GPU, in one process, with predictable latency.

`import edgesched` needs only numpy, pyyaml, pyzmq, msgpack and onnx; device libraries
(tensorrt, pycuda, cuda-python, jtop, onnxruntime) are imported by the one module using each.
"""
__version__ = "0.1.0"

from edgesched.errors import (  # noqa: E402  (the version must exist before submodules load)
    ConfigError, DeadlineExceeded, EdgeschedError, InvalidInput, MessageTooLarge,
    ModelLoadError, ModelUnavailable, Overloaded, RequestError, ServerError, ServerUnavailable,
    ShuttingDown, UnknownModel,
)
from edgesched.serve.client import AsyncClient, Client, Pending  # noqa: E402
from edgesched.types import Priority  # noqa: E402

__all__ = [
    "AsyncClient", "Client", "Pending", "Priority", "ConfigError", "DeadlineExceeded",
    "EdgeschedError", "InvalidInput", "MessageTooLarge", "ModelLoadError", "ModelUnavailable",
    "Overloaded", "RequestError", "ServerError", "ServerUnavailable", "ShuttingDown", "UnknownModel",
    "__version__",
]
