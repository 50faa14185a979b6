"""`TensorRTBackend`: serving engines in the device's shared primary CUDA context."""
from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from pathlib import Path
from typing import Mapping

import numpy as np

from edgesched.backends.base import Doorbell, LoadedModel
from edgesched.backends.blobs import Blobs
from edgesched.backends.tensorrt import cuda_streams, footprint
from edgesched.backends.tensorrt.build import _import_trt
from edgesched.backends.tensorrt.calibrating import Calibrating
from edgesched.backends.tensorrt.context import PrimaryContext, device_report, import_pycuda
from edgesched.backends.tensorrt.host_regions import HostRegionsMixin
from edgesched.backends.tensorrt.loading import ENGINE_SUFFIXES, Loader
from edgesched.backends.tensorrt.memory import Pool as _Pool
from edgesched.backends.tensorrt.memory import Tensor as _Tensor
from edgesched.backends.tensorrt.probing import Calibration
from edgesched.backends.tensorrt.slices import Slice as _Slice
from edgesched.backends.tensorrt.state import Flight as _Flight
from edgesched.backends.tensorrt.state import Model as _Model
from edgesched.backends.tensorrt.state import Request as _Request
from edgesched.errors import BackendUnavailable, EdgeschedError, InvalidInput, ModelLoadError
from edgesched.shapes import ShapeRange
from edgesched.types import Completion, Launch

# Everything runs in the device's PRIMARY context (the one TensorRT's runtime API uses), pushed
# around every CUDA-calling section of the engine thread and for the life of each waiter thread
# (context.py: retained once, released balanced). Streams, events and stream-ordered copies go
# through cuda_streams (priorities; see there why not pycuda); memory comes from pycuda.

__all__ = ["ENGINE_SUFFIXES", "TensorRTBackend", "device_report"]
log = logging.getLogger("edgesched.tensorrt")


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else 'no message'}"


class _LaunchError(Exception):
    """A launch that cannot be carried out: fails that request only."""


class TensorRTBackend(Calibrating, HostRegionsMixin):
    """TensorRT engines in the primary CUDA context, one priority stream per scheduler stream.

    `stream_priorities[k]` is stream k's CUDA priority: stream 0 the greatest the context
    offers, the others the least. `zero_copy` is True on an integrated GPU (Jetson), where
    request inputs and outputs live in pinned, device-mapped host memory; on a discrete GPU
    they are copied on the launch stream. A pool of waiter threads (one per stream) blocks in
    event synchronize (no spinning) and reports completions to `poll`.
    """

    name = "tensorrt"
    exclusive_instances = True     # an instance is one execution context: one launch at a time

    def __init__(self, streams: int, device: int = 0, *, timed: bool = False):
        """timed: every launch is bracketed by CUDA timing events and its Completion carries
        the device time (calibration); serving leaves it off (cheaper DISABLE_TIMING events)."""
        if streams < 1:
            raise ValueError("streams must be >= 1")
        self._trt = _import_trt()
        self._cuda = import_pycuda()
        self.num_streams = streams
        self.device, self._timed, self._closed = device, timed, False
        self._calibration = Calibration()      # probes and telemetry; idle unless calibrating
        self.stream_priorities: list[int] = []
        self.zero_copy = False
        self._primary: PrimaryContext | None = None
        self._loader: Loader | None = None
        self._streams: list[int] = []
        self._events: list[int] = []               # free events; _all_events owns them
        self._all_events: list[int] = []
        self._models: dict[str, _Model] = {}
        self._footprints: dict[str, dict[str, int]] = {}    # model -> footprint.py's bytes
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
        self._driver = cuda_streams.open_driver()      # first: it pops what pycuda leaves
        self._primary = PrimaryContext(cuda, device, self._driver)
        dev, attr = self._primary.device, cuda.device_attribute
        self.zero_copy = bool(dev.get_attribute(attr.INTEGRATED)) and \
            bool(dev.get_attribute(attr.CAN_MAP_HOST_MEMORY))
        compute_capability = "{}.{}".format(*dev.compute_capability())
        with self._current():
            least, greatest = self._driver.priority_range()
            self.stream_priorities = [greatest] + [least] * (self.num_streams - 1)
            for priority in self.stream_priorities:
                self._streams.append(self._driver.stream_create(priority))
            self._logger = trt.Logger(trt.Logger.WARNING)
            runtime = trt.Runtime(self._logger)
        # profiles are selected on the lowest-priority stream, which is synchronized at once
        self._loader = Loader(trt, runtime, compute_capability, self._streams[-1],
                              self._driver.stream_synchronize)
        self._pool = _Pool(cuda, self.zero_copy)
        self._open_host_regions()                  # clients' shared memory (host_regions.py)
        for s in range(self.num_streams):
            work: queue.SimpleQueue = queue.SimpleQueue()
            thread = threading.Thread(target=self._wait, args=(work,), daemon=True,
                                      name=f"edgesched-trt-wait-{s}")
            self._work.append(work), self._waiters.append(thread), thread.start()

    def _current(self):
        """The primary context current on this thread for the block (push/pop are cheap)."""
        return self._primary.current()

    # --- loading ----------------------------------------------------------------------------
    def load(self, model: str, path: Path, instances: int, *,
             shapes: Mapping[str, ShapeRange] | None = None) -> LoadedModel:
        """`shapes`: the config's shapes or ranges; each must lie inside what the engines were
        built for (their profiles), or the model is refused here rather than every request."""
        with self._current():
            try:
                loaded = self._loader.load(Path(path), max(instances, 1))
                for name, wanted in (shapes or {}).items():
                    for piece in loaded.readers.get(name, ()):
                        why = piece.refused(name, wanted.min) or piece.refused(name, wanted.max)
                        if why:
                            self._loader.release(loaded, list(self._models.values()))
                            raise ModelLoadError(
                                f"{path}: shapes: {name} {wanted} does not fit the engines: "
                                f"{why}; rebuild with `edgesched build --shape {name}:{wanted}`")
                self._footprints[model] = footprint.model_bytes(loaded, self.zero_copy)
            except BaseException as e:
                # A failed load frees what it made now, in the context: the engines it cached,
                # and the contexts and engines its traceback's frames hold (else they live,
                # device memory and all, as long as the exception does).
                traceback.clear_frames(e.__traceback__)
                self._loader.purge(list(self._models.values()))
                raise
        old, self._models[model] = self._models.get(model), loaded
        if old is not None:     # loaded again under its name: free the old one in the context
            with self._current():
                self._loader.release(old, list(self._models.values()))
        return LoadedModel(loaded.inputs, loaded.outputs, len(loaded.slices))

    def footprint_bytes(self, model: str) -> int:
        """Device bytes of `model`: weights + context scratch + I/O buffers (footprint.py)."""
        return sum(self._footprints[model].values())

    @property
    def blobs(self) -> Blobs | None:
        """Engine files kept in host RAM (serve/residency.py sets it under a memory budget)."""
        return self._loader.blobs

    @blobs.setter
    def blobs(self, blobs: Blobs | None) -> None:
        self._loader.blobs = blobs

    def unload(self, model: str) -> None:
        """Idempotent (a model evicted under the budget may be retired by a reload too)."""
        self._footprints.pop(model, None)
        gone = self._models.pop(model, None)
        if gone is not None:
            with self._current():  # contexts, then engines no other model uses (loading.py)
                self._loader.release(gone, list(self._models.values()))

    # --- running ----------------------------------------------------------------------------
    def stage(self, request_id: int, model: str, inputs: Mapping[str, np.ndarray]) -> None:
        """Copy the inputs into device-visible memory (staged with none: synthetic zeros).
        InvalidInput, before anything is held, for a shape the engines were not built for."""
        m = self._models[model]
        arrays = {}
        for spec in m.inputs:
            if spec.name in inputs:
                array = arrays[spec.name] = np.asarray(inputs[spec.name])
                for piece in m.readers[spec.name]:
                    why = piece.refused(spec.name, array.shape)
                    if why:
                        raise InvalidInput(f"model {model!r}: {why}")
            elif not inputs:
                readers = m.readers[spec.name]
                shape = readers[0].opt_shape(spec.name) if readers else \
                    [d or 1 for d in spec.shape]
                arrays[spec.name] = np.zeros(shape, spec.dtype)
        request = _Request(m, synthetic=not inputs)
        self._requests[request_id] = request
        try:
            with self._current():
                for spec in m.inputs:
                    if spec.name not in arrays:
                        continue                          # the launch that reads it fails
                    array = arrays[spec.name]
                    dtype = m.dtypes.get(spec.name, spec.np_dtype)
                    tensor = self._in_place(array, dtype)     # in a registered region: no copy
                    if tensor is not None:
                        request.tensors[spec.name] = tensor
                        continue
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
                if self._timed:
                    flight.start_event = self._take_event()
                    self._driver.event_record(flight.start_event, stream)
                enqueued = True
                if not self._enqueue(request, piece, flight.context, stream):
                    flight.error = "TensorRT execute_async_v3 returned False (see its log)"
                flight.event = self._take_event()
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

    def _take_event(self) -> int:
        if self._events:
            return self._events.pop()
        event = self._driver.event_create(timing=self._timed)
        self._all_events.append(event)
        return event

    def _enqueue(self, request: _Request, piece: _Slice, context, stream: int) -> bool:
        """Bind every I/O tensor of the slice and queue it (copies too) on `stream`."""
        for name in piece.inputs:
            tensor = request.tensors.get(name) or self._zeros(request, piece, name)
            # model inputs were checked in `stage`; a tensor crossing a cut can still miss
            if -1 in piece.shapes[name] and not context.set_input_shape(name, tensor.shape):
                raise _LaunchError(piece.refused(name, tensor.shape) or f"input {name!r}: "
                                   f"TensorRT refused shape {list(tensor.shape)}")
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
        shape = piece.opt_shape(name)
        tensor = self._tensor(request, name, piece.dtypes[name], shape, host=True)
        tensor.view().fill(0)
        tensor.dirty = not self.zero_copy
        return tensor

    def _wait(self, work: queue.SimpleQueue) -> None:
        """A waiter thread: sleeps in event synchronize, one launch after another."""
        self._primary.push()
        try:
            while (flight := work.get()) is not None:
                try:
                    self._driver.event_synchronize(flight.event)
                    if flight.start_event and not flight.error:
                        flight.device_s = 1e-3 * self._driver.event_elapsed_ms(
                            flight.start_event, flight.event)
                except Exception as e:  # a fault in the slice's kernels surfaces here
                    flight.error = flight.error or f"CUDA: {_one_line(e)}"
                flight.finished_s = time.monotonic()
                self._done.ring(flight)
                # The engine thread owns it now; held here until the next launch, its context
                # (and device memory) would outlive an unload of its model.
                flight = None
        finally:
            self._primary.pop()

    def poll(self, timeout_s: float) -> list[Completion]:
        return [self._finish(flight) for flight in self._done.wait(timeout_s)]

    def bind(self, doorbell: Doorbell) -> None:
        self._done = doorbell

    def _finish(self, flight: _Flight) -> Completion:
        """Back on the engine thread: the GPU is done with the launch's context and buffers."""
        if flight.context is not None:
            flight.piece.free.append(flight.context)
        self._events += [e for e in (flight.event, flight.start_event) if e]
        request = flight.request
        if request is not None and flight.context is not None:
            request.running -= 1
            if request.released and not request.running:
                self._free(request)
        return Completion(flight.launch, flight.started_s, flight.finished_s, flight.error,
                          flight.device_s)

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
            self._give(tensor.buf)        # host_regions.py: the pool, or a client's region
        request.tensors.clear()

    def close(self) -> None:
        """Stop the waiters (after the launches they hold), then free everything in the
        primary context and release it. Idempotent; problems are logged, not raised."""
        if self._closed:
            return
        self._closed = True
        if self._primary is not None and self._primary.retained:
            try:
                self._calibration.close(self._primary)
            except Exception as e:
                log.warning("closing the probe kernels: %s", _one_line(e))
        for work in self._work:
            work.put(None)
        for thread in self._waiters:
            thread.join(timeout=30.0)
        if self._primary is None or not self._primary.retained:
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
                self._primary.release()
            except Exception as e:
                log.warning("releasing the primary CUDA context: %s", _one_line(e))

    def _free_everything(self) -> None:
        """The waiters are stopped: nothing runs. I/O buffers first, then execution contexts,
        then engines (each context keeps its engine alive, each engine its runtime), then
        events and streams; the primary context is released after (close)."""
        self._done.wait(0.0)                         # flights hold execution contexts
        self._requests.clear()
        steps = [("host regions", self._host.unregister_all)] if self._host else []
        steps += [("buffers", self._pool.free_all)] if self._pool else []
        steps += [("engines", self._drop_engines)]
        steps += [("event", lambda e=e: self._driver.event_destroy(e)) for e in self._all_events]
        steps += [("stream", lambda s=s: self._driver.stream_destroy(s)) for s in self._streams]
        for what, step in steps:
            try:
                step()
            except Exception as e:
                log.warning("closing the TensorRT backend: %s: %s", what, _one_line(e))
        self._all_events, self._events, self._streams, self._pool = [], [], [], None

    def _drop_engines(self) -> None:
        if self._loader is None:                     # the constructor failed before it
            return
        for model in list(self._models):
            self._loader.release(self._models.pop(model), ())
        self._footprints.clear()
        self._loader.clear()
