"""`TensorRTBackend`: serving engines in the device's shared primary CUDA context."""
from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from edgesched.backends.base import Doorbell, LoadedModel
from edgesched.backends.tensorrt import cuda_streams
from edgesched.backends.tensorrt.build import _import_trt
from edgesched.backends.tensorrt.memory import Pool as _Pool
from edgesched.backends.tensorrt.memory import Tensor as _Tensor
from edgesched.backends.tensorrt.state import Flight as _Flight
from edgesched.backends.tensorrt.state import Model as _Model
from edgesched.backends.tensorrt.state import Request as _Request
from edgesched.backends.tensorrt.state import Slice as _Slice
from edgesched.errors import BackendUnavailable, EdgeschedError, ModelLoadError
from edgesched.modelfiles.manifest import MANIFEST_NAME, read_manifest
from edgesched.types import Completion, Launch

# Everything runs in the device's PRIMARY context (the one TensorRT's runtime API uses), pushed
# around every CUDA-calling section of the engine thread and for the life of each waiter thread.
# Streams, events and stream-ordered copies go through cuda_streams (priorities; see there why
# not pycuda); memory comes from pycuda.

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
log = logging.getLogger("edgesched.tensorrt")


def _import_pycuda():
    try:
        import pycuda.driver as cuda  # never pycuda.autoinit: it makes a second context
    except ImportError:
        raise BackendUnavailable("pycuda is not importable: pip install pycuda (it builds on the "
                                 "Jetson), or use backend: onnxruntime") from None
    return cuda


def device_report(device: int = 0) -> str:
    """One line on the CUDA device for `edgesched selftest`: name, SMs, compute capability,
    integrated or discrete, driver version, stream priority range."""
    cuda = _import_pycuda()
    cuda.init()
    dev = cuda.Device(device)
    attr = cuda.device_attribute
    ctx = dev.retain_primary_context()
    ctx.push()
    try:
        least, greatest = cuda_streams.open_driver().priority_range()
    finally:
        cuda.Context.pop()
    major, minor = dev.compute_capability()
    driver = cuda.get_driver_version()
    kind = "integrated (zero-copy)" if dev.get_attribute(attr.INTEGRATED) else "discrete"
    return (f"{dev.name()}, {dev.get_attribute(attr.MULTIPROCESSOR_COUNT)} SMs, compute "
            f"{major}.{minor}, {kind}, driver {driver // 1000}.{driver % 1000 // 10}, stream "
            f"priorities {greatest} (highest) .. {least}")


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else 'no message'}"


class _LaunchError(Exception):
    """A launch that cannot be carried out: fails that request only."""


class TensorRTBackend:
    """TensorRT engines in the primary CUDA context, one priority stream per scheduler stream.

    `stream_priorities[k]` is stream k's CUDA priority: stream 0 the greatest the context
    offers, the others the least. `zero_copy` is True on an integrated GPU (Jetson), where
    request inputs and outputs live in pinned, device-mapped host memory; on a discrete GPU
    they are copied on the launch stream. A pool of waiter threads (one per stream) blocks in
    event synchronize (no spinning) and reports completions to `poll`.
    """

    name = "tensorrt"

    def __init__(self, streams: int, device: int = 0):
        if streams < 1:
            raise ValueError("streams must be >= 1")
        self._trt = _import_trt()
        self._cuda = _import_pycuda()
        self.num_streams = streams
        self.stream_priorities: list[int] = []
        self.zero_copy = False
        self._ctx = None
        self._closed = False
        self._streams: list[int] = []
        self._events: list[int] = []               # free events; _all_events owns them
        self._all_events: list[int] = []
        self._engines: dict[Path, object] = {}
        self._models: dict[str, _Model] = {}
        self._requests: dict[int, _Request] = {}
        self._done = Doorbell()        # rung with each finished launch; the engine's once bound
        self._work: list[queue.SimpleQueue] = []
        self._waiters: list[threading.Thread] = []
        self._pool: _Pool | None = None
        try:
            self._open(device)
        except BaseException as e:
            self.close()
            if isinstance(e, EdgeschedError) or not isinstance(e, Exception):
                raise
            raise BackendUnavailable(f"CUDA device {device} cannot serve TensorRT: "
                                     f"{_one_line(e)}") from None

    def _open(self, device: int) -> None:
        cuda, trt = self._cuda, self._trt
        cuda.init()
        dev = cuda.Device(device)
        attr = cuda.device_attribute
        self.zero_copy = bool(dev.get_attribute(attr.INTEGRATED)) and \
            bool(dev.get_attribute(attr.CAN_MAP_HOST_MEMORY))
        self._ctx = dev.retain_primary_context()
        self._driver = cuda_streams.open_driver()
        with self._current():
            least, greatest = self._driver.priority_range()
            self.stream_priorities = [greatest] + [least] * (self.num_streams - 1)
            for priority in self.stream_priorities:
                self._streams.append(self._driver.stream_create(priority))
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
        self._pool = _Pool(cuda, self.zero_copy)
        for s in range(self.num_streams):
            work: queue.SimpleQueue = queue.SimpleQueue()
            thread = threading.Thread(target=self._wait, args=(work,), daemon=True,
                                      name=f"edgesched-trt-wait-{s}")
            self._work.append(work)
            self._waiters.append(thread)
            thread.start()

    @contextlib.contextmanager
    def _current(self):
        """The primary context current on this thread for the block (push/pop are cheap)."""
        self._ctx.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    # --- loading ----------------------------------------------------------------------------
    def load(self, model: str, path: Path, instances: int) -> LoadedModel:
        path = Path(path)
        if path.is_dir():
            loader = self._load_sliced
        elif path.suffix in ENGINE_SUFFIXES and path.is_file():
            loader = self._load_engine_file
        elif path.suffix == ".onnx":
            raise ModelLoadError(f"{path}: an ONNX model; the tensorrt backend serves engines: "
                                 "run `edgesched build` on the device")
        elif not path.exists():
            raise ModelLoadError(f"{path}: no such file or directory")
        else:
            raise ModelLoadError(f"{path}: not a TensorRT engine ({', '.join(ENGINE_SUFFIXES)}) "
                                 "nor a sliced directory with manifest.json")
        with self._current():
            loaded = loader(path, max(instances, 1))
        self._models[model] = loaded
        return LoadedModel(loaded.inputs, loaded.outputs, len(loaded.slices))

    def _engine(self, path: Path):
        """Each engine file is deserialized once, however many models or slices use it."""
        key = path.resolve()
        if key not in self._engines:
            try:
                blob = path.read_bytes()
            except OSError as e:
                raise ModelLoadError(f"{path}: cannot read: {e.strerror or e}") from None
            try:
                engine = self._runtime.deserialize_cuda_engine(blob)
            except Exception:  # the bindings raise on some malformed blobs instead of None
                engine = None
            if engine is None:
                raise ModelLoadError(
                    f"{path}: TensorRT {self._trt.__version__} cannot deserialize it: most likely "
                    "built for another TensorRT version or another GPU; rebuild it on this "
                    "device with `edgesched build`")
            self._engines[key] = engine
        return self._engines[key]

    def _load_engine_file(self, path: Path, instances: int) -> _Model:
        piece = _Slice(self._trt, self._engine(path), instances, path)
        return _Model([piece], [piece.spec(n) for n in piece.inputs],
                      [piece.spec(n) for n in piece.outputs])

    def _load_sliced(self, directory: Path, instances: int) -> _Model:
        if not (directory / MANIFEST_NAME).is_file():
            raise ModelLoadError(f"{directory}: a directory without {MANIFEST_NAME}")
        manifest = read_manifest(directory)
        missing = [e for e in manifest.slices if not e.engine]
        if missing:
            raise ModelLoadError(f"{directory}: slice {missing[0].index} ({missing[0].file}) has "
                                 "no TensorRT engine; run `edgesched build` on the device")
        slices: list[_Slice] = []
        dtypes: dict[str, np.dtype] = {}
        for entry in manifest.slices:
            path = directory / entry.engine
            if not path.is_file():
                raise ModelLoadError(f"{path}: no such engine (slices[{entry.index}] in "
                                     f"{MANIFEST_NAME}); run `edgesched build` on the device")
            piece = _Slice(self._trt, self._engine(path), instances, path)
            if set(piece.inputs) != set(entry.inputs) or \
                    not set(entry.outputs) <= set(piece.outputs):
                raise ModelLoadError(f"{path}: its inputs/outputs do not match "
                                     f"slices[{entry.index}] in {MANIFEST_NAME}")
            for name, dtype in piece.dtypes.items():
                if dtypes.setdefault(name, dtype) != dtype:
                    raise ModelLoadError(f"{path}: tensor {name!r} is {dtype} here but "
                                         f"{dtypes[name]} in an earlier slice's engine")
            slices.append(piece)
        return _Model(slices, manifest.inputs, manifest.outputs)

    # --- running ----------------------------------------------------------------------------
    def stage(self, request_id: int, model: str, inputs: Mapping[str, np.ndarray]) -> None:
        """Copy the inputs into device-visible memory (staged with none: synthetic zeros)."""
        m = self._models[model]
        request = _Request(m, synthetic=not inputs)
        self._requests[request_id] = request
        try:
            with self._current():
                for spec in m.inputs:
                    if spec.name in inputs:
                        array = np.asarray(inputs[spec.name])
                    elif request.synthetic:
                        array = np.zeros([d or 1 for d in spec.shape], spec.dtype)
                    else:
                        continue                          # the launch that reads it fails
                    dtype = m.dtypes.get(spec.name, spec.np_dtype)
                    tensor = self._tensor(request, spec.name, dtype, array.shape, host=True)
                    np.copyto(tensor.view(), array, casting="unsafe")  # to the engine's dtype
                    tensor.dirty = not self.zero_copy
        except Exception as e:  # allocation failed: that request fails at its first launch
            request.error = f"staging its inputs failed: {_one_line(e)}"

    def _tensor(self, request: _Request, name: str, dtype: np.dtype, shape, *,
                host: bool) -> _Tensor:
        shape = tuple(int(d) for d in shape)
        old = request.tensors.get(name)
        if old is not None and old.dtype == dtype and old.shape == shape and \
                (old.buf.host is not None or not host):
            return old
        if old is not None:
            self._pool.give(old.buf)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        tensor = _Tensor(self._pool.take(host, nbytes), dtype, shape)
        request.tensors[name] = tensor
        return tensor

    def launch(self, launch: Launch) -> None:
        request = self._requests.get(launch.request_id)
        flight = _Flight(launch, request, time.monotonic())
        enqueued = False
        try:
            if request is None:
                raise _LaunchError("the request was never staged")
            if request.error:
                raise _LaunchError(request.error)
            piece = request.model.slices[launch.slice_index]
            stream = self._streams[launch.stream]
            if not piece.free:
                raise _LaunchError(f"all {len(piece.contexts)} execution contexts of slice "
                                   f"{launch.slice_index} are busy (model instances)")
            request.running += 1
            flight.piece, flight.context = piece, piece.free.pop()
            with self._current():
                enqueued = True
                if not self._enqueue(request, piece, flight.context, stream):
                    flight.error = "TensorRT execute_async_v3 returned False (see its log)"
                flight.event = self._events.pop() if self._events else self._new_event()
                self._driver.event_record(flight.event, stream)
            self._work[launch.stream].put(flight)
            return
        except _LaunchError as e:
            flight.error = str(e)
        except Exception as e:
            flight.error = _one_line(e)
        if enqueued:                  # never free what queued work may still touch
            try:
                with self._current():
                    self._driver.stream_synchronize(self._streams[launch.stream])
            except Exception as e:
                log.warning("stream %d: synchronize after a failed launch: %s", launch.stream,
                            _one_line(e))
        flight.finished_s = time.monotonic()
        self._done.ring(flight)

    def _new_event(self) -> int:
        event = self._driver.event_create()
        self._all_events.append(event)
        return event

    def _enqueue(self, request: _Request, piece: _Slice, context, stream: int) -> bool:
        """Bind every I/O tensor of the slice and queue it (copies too) on `stream`."""
        for name in piece.inputs:
            tensor = request.tensors.get(name) or self._zeros(request, piece, name)
            if -1 in piece.shapes[name] and not context.set_input_shape(name, tensor.shape):
                raise _LaunchError(f"input {name!r}: shape {list(tensor.shape)} is outside "
                                   "the engine's optimization profile")
            if tensor.dirty and tensor.nbytes:
                self._driver.memcpy_htod_async(tensor.buf.ptr, tensor.buf.host_ptr,
                                               tensor.nbytes, stream)
                tensor.dirty = False
            self._bind(context, name, tensor)
        outputs = []
        for name in piece.outputs:
            shape = tuple(int(d) for d in context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise _LaunchError(f"output {name!r}: shape {list(shape)} is known only after "
                                   "running (data-dependent shapes are not supported)")
            host = name in request.model.host_visible
            tensor = self._tensor(request, name, piece.dtypes[name], shape, host=host)
            self._bind(context, name, tensor)
            outputs.append(tensor)
        if not context.execute_async_v3(stream):
            return False
        if not self.zero_copy:
            for tensor in outputs:
                if tensor.buf.host is not None and tensor.nbytes:
                    self._driver.memcpy_dtoh_async(tensor.buf.host_ptr, tensor.buf.ptr,
                                                   tensor.nbytes, stream)
        return True

    @staticmethod
    def _bind(context, name: str, tensor: _Tensor) -> None:
        if not context.set_tensor_address(name, tensor.buf.ptr):
            raise _LaunchError(f"TensorRT refused the address of tensor {name!r}")

    def _zeros(self, request: _Request, piece: _Slice, name: str) -> _Tensor:
        """A synthetic run's missing tensor (calibration launches slices alone): zeros."""
        if not request.synthetic:
            raise _LaunchError(f"tensor {name!r} is not there (no input, or its slice has "
                               "not run)")
        shape = tuple(1 if d < 0 else d for d in piece.shapes[name])
        tensor = self._tensor(request, name, piece.dtypes[name], shape, host=True)
        tensor.view().fill(0)
        tensor.dirty = not self.zero_copy
        return tensor

    def _wait(self, work: queue.SimpleQueue) -> None:
        """A waiter thread: sleeps in event synchronize, one launch after another."""
        self._ctx.push()
        try:
            while (flight := work.get()) is not None:
                try:
                    self._driver.event_synchronize(flight.event)
                except Exception as e:  # a fault in the slice's kernels surfaces here
                    flight.error = flight.error or f"CUDA: {_one_line(e)}"
                flight.finished_s = time.monotonic()
                self._done.ring(flight)
        finally:
            self._cuda.Context.pop()

    def poll(self, timeout_s: float) -> list[Completion]:
        return [self._finish(flight) for flight in self._done.wait(timeout_s)]

    def bind(self, doorbell: Doorbell) -> None:
        self._done = doorbell

    def _finish(self, flight: _Flight) -> Completion:
        """Back on the engine thread: the GPU is done with the launch's context and buffers."""
        if flight.context is not None:
            flight.piece.free.append(flight.context)
        if flight.event:
            self._events.append(flight.event)
        request = flight.request
        if request is not None and flight.context is not None:
            request.running -= 1
            if request.released and not request.running:
                self._free(request)
        return Completion(flight.launch, flight.started_s, flight.finished_s, flight.error)

    def fetch(self, request_id: int) -> dict[str, np.ndarray]:
        request = self._requests.pop(request_id)
        try:
            return {t.name: request.tensors[t.name].view().astype(t.np_dtype)  # a copy
                    for t in request.model.outputs}
        finally:
            self._drop(request)

    def release(self, request_id: int) -> None:
        request = self._requests.pop(request_id, None)
        if request is not None:
            self._drop(request)

    def _drop(self, request: _Request) -> None:
        request.released = True
        if not request.running:
            self._free(request)

    def _free(self, request: _Request) -> None:
        for tensor in request.tensors.values():
            self._pool.give(tensor.buf)
        request.tensors.clear()

    def close(self) -> None:
        """Stop the waiters (after the launches they hold), then free everything in the
        primary context and release it. Idempotent; problems are logged, not raised."""
        if self._closed:
            return
        self._closed = True
        for work in self._work:
            work.put(None)
        for thread in self._waiters:
            thread.join(timeout=30.0)
        if self._ctx is None:
            return
        if any(thread.is_alive() for thread in self._waiters):
            # A slice is still running (it overran the launch timeout): freeing its memory
            # would wait on the hung kernel. The process is exiting; the driver reclaims it.
            log.error("a slice is still running on the GPU; leaving its memory to the driver")
            return
        try:
            with self._current():
                self._free_everything()
        except Exception as e:
            log.warning("closing the TensorRT backend: %s", _one_line(e))
        finally:
            try:
                self._ctx.detach()
            except Exception as e:
                log.warning("releasing the primary CUDA context: %s", _one_line(e))
            self._ctx = None

    def _free_everything(self) -> None:
        self._done.wait(0.0)                         # flights hold execution contexts
        self._requests.clear()
        self._models.clear()                         # execution contexts, then engines, runtime
        self._engines.clear()
        self._runtime = None
        steps = [("buffers", self._pool.free_all)] if self._pool else []
        steps += [("event", lambda e=e: self._driver.event_destroy(e)) for e in self._all_events]
        steps += [("stream", lambda s=s: self._driver.stream_destroy(s)) for s in self._streams]
        for what, step in steps:
            try:
                step()
            except Exception as e:
                log.warning("closing the TensorRT backend: %s: %s", what, _one_line(e))
        self._all_events, self._events, self._streams, self._pool = [], [], [], None
