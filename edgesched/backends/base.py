"""The one interface every device kind implements (ONNX Runtime, TensorRT, simulator, fakes).

The engine thread is the only caller, except `wake`, which any thread may call. A backend
carries out launches; it never decides what runs (that is the policy's job).
Request tensors live in the backend between slices (on TensorRT they stay in device-visible
memory), so the engine only hands over inputs once (`stage`) and takes outputs once (`fetch`).
"""
from __future__ import annotations

import queue
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Protocol

import numpy as np

from edgesched.types import Completion, Launch, TensorSpec


@dataclass(frozen=True)
class LoadedModel:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    num_slices: int


class Backend(Protocol):
    name: str
    num_streams: int

    def load(self, model: str, path: Path, instances: int) -> LoadedModel:
        """Load a model (raises ModelLoadError with the file and the cause)."""

    def stage(self, request_id: int, model: str, inputs: Mapping[str, np.ndarray]) -> None:
        """Take a request's (already validated) inputs before its first launch."""

    def launch(self, launch: Launch) -> None:
        """Start one slice on one stream; returns at once. Its end is reported by poll."""

    def poll(self, timeout_s: float) -> list[Completion]:
        """Completions so far; waits up to timeout_s for the first one (or a wake)."""

    def fetch(self, request_id: int) -> dict[str, np.ndarray]:
        """A finished request's outputs; frees what the backend held for it."""

    def release(self, request_id: int) -> None:
        """Free a request that will not finish (failed, expired). Idempotent."""

    def wake(self) -> None:
        """Make a poll that is waiting now return early. Thread-safe."""

    def close(self) -> None: ...


WAKE = object()      # put into a completion queue by wake(): ends a waiting drain early


def drain(done: queue.SimpleQueue, timeout_s: float) -> list:
    """What a thread-based backend's completion queue holds: waits up to timeout_s for the
    first item, then takes whatever else is there without waiting; WAKE markers dropped."""
    try:
        first = done.get(timeout=timeout_s) if timeout_s > 0 else done.get_nowait()
    except queue.Empty:
        return []
    items = [first]
    while True:
        try:
            items.append(done.get_nowait())
        except queue.Empty:
            return [item for item in items if item is not WAKE]
