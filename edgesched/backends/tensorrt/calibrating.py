"""The TensorRT backend's calibration side: probe kernels beside the slices (probing.py),
telemetry windows, per-layer times through an IProfiler (layers.py), and what a profile measured
here is tied to. A mixin of `TensorRTBackend`: it reads the backend's primary context
(`_primary`), device, tensorrt and pycuda modules and loaded models, and imports no device
library itself."""
from __future__ import annotations

from edgesched.backends.tensorrt.layers import make_profiler, node_times_us, read_layer_info
from edgesched.errors import BackendUnavailable, EdgeschedError


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else 'no message'}"


class Calibrating:
    """Calibration methods of `TensorRTBackend` (the engine loop never calls them)."""

    def launch_probe(self, sm: float, mem: float, seconds: float) -> int:
        """Start probe kernels on their own least-priority streams: the compute probe on `sm`
        of the SMs, the streaming probe on `mem` of them (0: none), relaunched until
        `stop_probe` or `seconds` pass. Compiles the probes (NVRTC) on first use."""
        try:
            return self._calibration.launch(self._primary, self.device, sm, mem, seconds)
        except EdgeschedError:
            raise
        except Exception as e:
            raise BackendUnavailable(f"probe kernels cannot run: {_one_line(e)}") from None

    def stop_probe(self, key: int) -> None:
        """Stop a probe and wait for its queued chunks (idempotent; unknown keys ignored)."""
        error = self._calibration.stop(self._primary, key)
        if error:
            raise BackendUnavailable(f"probe {key} failed on the GPU: {error}")

    def attach_telemetry(self, reader) -> None:
        """Sample `reader` (telemetry/) from now on for `telemetry()`; closed with the backend."""
        self._calibration.attach(reader)

    @property
    def min_window_s(self) -> float:
        """The shortest solo window telemetry can average over (0: no telemetry attached)."""
        return self._calibration.min_window_s

    def telemetry(self) -> tuple[float, float]:
        """(GPU load, EMC utilization), fractions 0..1, averaged since the previous call."""
        return self._calibration.window()

    def profile_layers(self, model: str, index: int, on: bool) -> dict[str, float]:
        """Attach (on) or detach (off) an IProfiler to every execution context of one slice.
        Detaching returns its ONNX node -> mean microseconds per run, through the layer JSON
        beside the engine (layers.py); {} where the slice ran no profiled launch."""
        piece = self._models[model].slices[index]
        if on:
            profiler = make_profiler(self._trt)
            for context in piece.contexts:
                context.profiler = profiler
            return {}
        profiler = piece.contexts[0].profiler if piece.contexts else None
        for context in piece.contexts:
            context.profiler = None
        if profiler is None:
            return {}
        return node_times_us(profiler.mean_ms(), read_layer_info(piece.path))

    def identity(self) -> dict:
        """What a profile measured here is tied to on the software and GPU side."""
        cuda, dev = self._cuda, self._primary.device
        version = cuda.get_driver_version()
        return {"tensorrt": str(self._trt.__version__),
                "cuda_driver": f"{version // 1000}.{version % 1000 // 10}",
                "gpu": dev.name(), "compute_capability": "{}.{}".format(*dev.compute_capability()),
                "sms": int(dev.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT))}


__all__ = ["Calibrating"]
