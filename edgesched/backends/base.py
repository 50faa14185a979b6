"""The one interface every device kind implements (ONNX Runtime, TensorRT, simulator, fakes).

The engine thread is the only caller. A backend carries out launches; it never decides what
runs (that is the policy's job). Its waits for completions end early when the doorbell it is
bound to rings: the engine owns that doorbell (`bind`), so a submission from any thread wakes
whichever backend is waiting; a backend used alone (calibration) keeps one of its own.
Request tensors live in the backend between slices (on TensorRT they stay in device-visible
memory), so the engine only hands over inputs once (`stage`) and takes outputs once (`fetch`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Protocol

import numpy as np

from edgesched.backends.doorbell import Doorbell
from edgesched.types import Completion, Launch, TensorSpec

if TYPE_CHECKING:
    from edgesched.shapes import ShapeRange


@dataclass(frozen=True)
class LoadedModel:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    num_slices: int


class Backend(Protocol):
    name: str
    num_streams: int

    def load(self, model: str, path: Path, instances: int, *,
             shapes: Mapping[str, "ShapeRange"] | None = None) -> LoadedModel:
        """Load a model (raises ModelLoadError with the file and the cause). `shapes`: the
        inputs' configured shapes or ranges (edgesched.shapes), where a backend needs them
        (to cost the model, build profiles, make calibration inputs); load_models passes it
        only when the config gives some, so a backend without the keyword still loads
        every model that has none."""

    def unload(self, model: str) -> None:
        """Free what `load` made for `model` (a reload removed it). The engine calls it only
        once no request of the model is staged or running."""

    def footprint_bytes(self, model: str) -> int:
        """What loaded `model` holds in memory the budget (`limits.device_memory_mb`) counts,
        in bytes: device memory on TensorRT (on a Jetson that is the DRAM the CPU shares),
        the session's memory on ONNX Runtime, the weights and activations of the simulated
        device. Measured or estimated once, at `load`; each backend says how in its own
        footprint helper."""

    def stage(self, request_id: int, model: str, inputs: Mapping[str, np.ndarray]) -> None:
        """Take a request's (already validated) inputs before its first launch."""

    def launch(self, launch: Launch) -> None:
        """Start one slice on one stream; returns at once. Its end is reported by poll."""

    def poll(self, timeout_s: float) -> list[Completion]:
        """Completions so far; waits up to timeout_s for the first one (or a doorbell ring)."""

    def fetch(self, request_id: int) -> dict[str, np.ndarray]:
        """A finished request's outputs; frees what the backend held for it."""

    def release(self, request_id: int) -> None:
        """Free a request that will not finish (failed, expired). Idempotent."""

    def bind(self, doorbell: "Doorbell") -> None:
        """Wait on `doorbell` from now on (a ring ends a waiting poll early); a thread-based
        backend also rings it with each finished launch."""

    def close(self) -> None: ...


__all__ = ["Backend", "Doorbell", "LoadedModel"]
