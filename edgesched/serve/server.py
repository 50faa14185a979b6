"""The edgesched server: one thread owns the ZeroMQ ROUTER and the engine loop.

The serve thread receives, checks and decodes requests, answers bad ones at once, submits good
ones to the engine, steps the engine and sends its replies on the ROUTER itself. Its one wait
is the engine's: the engine's doorbell is shared with the socket (backends/doorbell.py), so a
wait for completions also ends when a request arrives. A request crosses no thread on its way
in and none on its way out; only the backend's own workers (ONNX Runtime's stream threads,
TensorRT's completion watcher) hand completions back through the doorbell, and ONNX Runtime
runs a short slice that would run alone on this thread itself (backends/onnxruntime.py). Two
threads with an inproc pipe between them cost ~4 hand-offs per request (45-70 us each on a
2-core x86 VM).
Intake is bounded in bytes (serve/intake.py); inputs may be read in place from clients'
shared-memory regions (serve/shm.py).
"""
from __future__ import annotations

import logging
import math
import stat
import threading
import time

import zmq

from edgesched import endpoints
from edgesched.backends import Backend, create_backend
from edgesched.config import Config
from edgesched.engine import Engine, Result, Submission
from edgesched.errors import (
    DeadlineExceeded,
    EdgeschedError,
    InvalidInput,
    MessageTooLarge,
    Overloaded,
    RequestError,
    ServerError,
    ShuttingDown,
    UnknownModel,
)
from edgesched.profiles import choose_profile, device_name
from edgesched.sched import make_policy
from edgesched.sched.health import Health
from edgesched.serve import access, intake, multipart, observe, queries, shm, wire
from edgesched.serve.reload import Reloader
from edgesched.serve.residency import Residency
from edgesched.serve.systemd import Notifier

log = logging.getLogger("edgesched.server")
_BATCH = 64            # messages read per loop round: the engine steps between rounds


class Server:
    def __init__(self, config: Config, endpoint: str | None = None,
                 backend: Backend | None = None, force_profile: bool = False,
                 notifier: Notifier | None = None, metrics: str | None = None):
        """metrics: HOST:PORT for Prometheus /metrics, overriding server.metrics."""
        self.config = config
        self._metrics_at, self.metrics = metrics or config.server.metrics, None
        # systemd Type=notify: READY=1 / WATCHDOG=1 / STOPPING=1 (a no-op outside systemd).
        # One the server makes itself it also closes; one passed in belongs to the caller.
        self._owns_notifier = notifier is None
        self.notifier = Notifier.from_env() if notifier is None else notifier
        self.endpoint = endpoint or config.server.endpoint
        server = config.server
        self._keys = None if server.curve_secret_key is None else access.CurveKeys(
            server.curve_secret_key, server.curve_authorized_keys)
        endpoints.require_keys(self.endpoint, self._keys, config.source if endpoint is None
                            else "--endpoint", "server.endpoint" if endpoint is None else "endpoint")
        self._gid = None if server.socket_group is None else endpoints.group_id(server.socket_group)
        self.admins = access.Admins(server, self.endpoint, config.source)  # LOAD/UNLOAD
        self._auth = None                        # the CURVE (ZAP) handler thread, if any
        self.backend = backend or create_backend(config.device.backend, config.device.streams,
                                                 config.device.cpu_threads_per_stream,
                                                 config.device.sim_device)
        try:
            # limits.device_memory_mb: which models stay loaded (serve/residency.py)
            self.residency = Residency(self.backend, config.limits.device_memory_mb,
                                       config.source)
            self.models = self.residency.load(config.models)
            profile = choose_profile(config, force_profile)
            policy = make_policy(config.scheduler.policy.value, config.source, profile=profile,
                                 **config.scheduler.policy_options())
            self.board = observe.Board(config.telemetry.value)
            drift, cause = observe.make_drift(
                config, observe.drift_profile(config, profile, device_name(config)),
                self.models, self.board.latest)
        except BaseException:
            if hasattr(self, "board"):
                self.board.close()
            self.backend.close()
            raise
        limits = config.limits
        self.engine = Engine(self.backend, self.models, policy, queue_depth=limits.queue_depth,
                             on_result=self._send_result, launch_timeout_s=limits.launch_timeout_s,
                             health=Health(self.models, limits.unhealthy_after,
                                           limits.unhealthy_retry_s),
                             drift=drift, drift_cause=cause, profile=profile)
        self.stats = self.engine.stats
        self._max_bytes = config.limits.max_message_bytes
        self.intake = intake.IntakeBudget(config.limits.intake_bytes)
        # A GPU backend registers each mapped region with CUDA (TensorRT: inputs read in place)
        self.regions = shm.Regions(self._gid, map_host=getattr(self.backend, "map_host", None),
                                   unmap_host=getattr(self.backend, "unmap_host", None))
        self.reloader = Reloader(self)       # SIGHUP and model control (serve/reload.py)
        self._ctx = zmq.Context()
        self._router: zmq.Socket | None = None   # the serve thread's, while it runs
        self._events: dict = {}                  # what the last poll saw ready
        self._accepting = True
        self._intake = threading.Lock()
        self.residency.start(self.engine, self._send_result, self._intake)
        self._stop_engine = threading.Event()
        self._go = threading.Event()             # start() succeeded: serve
        self._stopped = False
        self._ready = threading.Event()
        self._wedged = False
        self._io_error: BaseException | None = None
        self.started_s = time.monotonic()
        self.undeliverable = 0
        self._thread = threading.Thread(target=self._serve, name="edgesched-serve", daemon=True)

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "Server":
        try:
            intake.return_large_buffers()        # RSS follows the byte budget (serve/intake.py)
            self._prepare_ipc()
            self._thread.start()
            self._ready.wait()
            if self._io_error is not None:
                raise self._io_error
            self.board.start()
            if self._metrics_at is not None:
                from edgesched.serve.metrics import MetricsServer  # prometheus_client
                try:
                    self.metrics = MetricsServer(self, self._metrics_at)
                except OSError as e:
                    raise EdgeschedError(f"cannot serve metrics on {self._metrics_at}: "
                                         f"{e.strerror or e}") from None
        except BaseException:
            if self._thread.ident is not None:   # bound, then metrics failed: stop it
                self._stop_engine.set()
                self._go.set()
                self._thread.join()
            self._stopped = True                 # everything is released: stop() is a no-op
            self._close_watchers()
            self.backend.close()
            self.engine.doorbell.close()
            self._ctx.term()
            self._close_notifier()
            raise
        self._go.set()
        log.info("serving %d models on %s", len(self.models), self.endpoint)
        # Models are loaded and the socket is bound: clients can connect from now on.
        self.notifier.ready()
        return self

    def stop(self, drain_timeout_s: float | None = None) -> None:
        """Stop intake, finish in-flight work (up to the drain timeout), then shut down."""
        if self._stopped:
            return
        self._stopped = True
        self.notifier.stopping()
        if self._thread.ident is None:           # never started
            self._close_watchers()
            self.backend.close()
            self._ctx.term()
            self._close_notifier()
            return
        timeout = self.config.server.drain_timeout_s if drain_timeout_s is None \
            else drain_timeout_s
        with self._intake:
            self._accepting = False
        give_up = time.monotonic() + timeout
        while not (self.engine.idle and self.residency.idle) and time.monotonic() < give_up:
            time.sleep(0.005)
        self._stop_engine.set()
        self.engine.wake()
        self._thread.join()      # it answers what is left (ShuttingDown), then sends it out
        self._close_watchers()
        # The backend first: after a drain timeout a launch may still read a region, and the
        # backend's close waits for its launches, then gives every CUDA registration back.
        self.backend.close()
        self.regions.close()
        self.engine.doorbell.close()
        self._ctx.term()
        self._close_notifier()

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _close_watchers(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        self.board.close()

    def _close_notifier(self) -> None:
        if self._owns_notifier:
            self.notifier.close()

    def _prepare_ipc(self) -> None:
        """Create (or check) the socket's directory; refuse to steal a live server's socket."""
        path = endpoints.ipc_path(self.endpoint)
        if path is None:
            return
        access.prepare_socket_dir(path, self._gid)
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise EdgeschedError(f"{path} exists and is not a socket: refusing to replace it")
            if access.listening(path):
                raise EdgeschedError(f"another server is already serving on {self.endpoint}")
            path.unlink()  # stale file from a killed server

    # --- the serve thread ---------------------------------------------------------------------
    def _serve(self) -> None:
        router = self._bind()
        if router is None:
            return
        self._ready.set()
        self._go.wait()
        self._router = router
        poller = zmq.Poller()
        sweep = shm.Sweeper(self.regions, router)     # regions of peers that are gone
        for sock in (router, sweep.monitor):
            poller.register(sock, zmq.POLLIN)
        # The engine's waits (inside Backend.poll) block here: on the socket, the sweeper's
        # monitor and the doorbell's pipe; ms, rounded up so a sub-ms wait is not a busy loop.
        poller.register(self.engine.doorbell.share(
            lambda timeout_s: self._events.update(poller.poll(math.ceil(timeout_s * 1e3)))),
            zmq.POLLIN)
        try:
            while not self._stop_engine.is_set():
                self._watchdog()
                try:
                    self.engine.step(0.05)
                except Exception:
                    # A bug, not a request's fault: keep serving, but answer everyone now
                    # waiting (their state may be inconsistent) rather than leave them to time out.
                    log.exception("engine step failed; failing outstanding requests")
                    self.engine.abort_all(ServerError("internal error in the engine loop"))
                self._drain(router, self._handle, router)
                events, self._events = self._events, {}
                sweep(events, time.monotonic())
            # Stopping, after the drain: what is still queued, running or waiting for its model
            # to load is answered now.
            stopped = ShuttingDown("the server stopped before the request finished")
            self.residency.abort_all(stopped)
            self.engine.abort_all(stopped)
        finally:
            self._router = None
            sweep.close()
            # Replies still being written out (large tensors) get up to the drain timeout;
            # replies to clients that are gone are dropped by libzmq, not waited for.
            router.close(linger=int(self.config.server.drain_timeout_s * 1000))
            self._stop_auth()
            path = endpoints.ipc_path(self.endpoint)
            if path is not None:
                path.unlink(missing_ok=True)

    def _watchdog(self) -> None:
        # systemd's watchdog ping comes from the serve loop (rate-limited inside), so a loop
        # stuck in a step stops the pings and systemd restarts the service. So does a device
        # whose every stream is held by a hung slice: only a restart gets them back.
        if self.engine.stuck_streams < self.backend.num_streams:
            self.notifier.watchdog()
            self._wedged = False
        elif not self._wedged:
            self._wedged = True
            log.error("every stream is held by a hung slice; no more watchdog pings (under "
                      "systemd the service will be restarted)")
            self.notifier.status("wedged: every stream is held by a hung slice")

    def _bind(self) -> zmq.Socket | None:
        """The bound ROUTER, or None with the reason in _io_error (and _ready set)."""
        router = self._ctx.socket(zmq.ROUTER)
        try:
            router.setsockopt(zmq.LINGER, 0)
            router.setsockopt(zmq.ROUTER_MANDATORY, 1)   # unknown peer: an error, not silence
            # Hard cap per frame: larger frames are dropped by libzmq before we see them; below
            # it, oversize messages get a typed MessageTooLarge reply.
            router.setsockopt(zmq.MAXMSGSIZE, intake.frame_cap_bytes(self._max_bytes,
                                                                    wire.MAX_HEADER_BYTES))
            router.setsockopt(zmq.RCVHWM, intake.receive_hwm(self.intake.limit_bytes,
                                                             self._max_bytes))
            if self._keys is not None:
                self._auth = self._keys.start(self._ctx, router)
            router.bind(self.endpoint)
            path = endpoints.ipc_path(self.endpoint)
            if path is not None:
                access.secure_socket(path, self._gid)
            return router
        except (zmq.ZMQError, EdgeschedError) as e:
            router.close(linger=0)
            self._stop_auth()
            self._io_error = e if isinstance(e, EdgeschedError) else EdgeschedError(
                f"cannot bind {self.endpoint}: {e}")
            self._ready.set()
            return None

    def _send_result(self, result: Result) -> None:
        """Called on the serve thread: encode and send."""
        if not isinstance(result.reply_to, tuple):   # a reload's warm-up (serve/reload.py)
            return result.reply_to(result)
        envelope, request_id, held_bytes, regions, targets = result.reply_to
        self.intake.give(held_bytes)             # its frames are dropped with this result
        error = result.error
        try:
            written = shm.write_targets(result.outputs, targets) if targets and not error \
                else None
        except InvalidInput as e:
            error = e
        self.regions.release(regions)            # its claim on shared memory ends
        frames = None
        if error is None:
            try:
                frames = wire.encode_result(request_id, result.outputs, result.timings, written)
            except InvalidInput as e:            # an output the wire cannot carry
                error = ServerError(f"model {result.model!r}: {e}")
                log.warning("%s", error)
        if error is not None:
            frames = wire.encode_error(request_id, error)
        self._forward(envelope + frames, self._router)

    def _stop_auth(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    @staticmethod
    def _drain(sock: zmq.Socket, handler, router: zmq.Socket, limit: int = _BATCH) -> None:
        for _ in range(limit):
            if not multipart.ready(sock):
                return
            handler(multipart.receive(sock), router)

    def _forward(self, message: list, router: zmq.Socket | None) -> None:
        try:
            multipart.send(router, message, multipart.NOBLOCK)
        except (zmq.ZMQError, AttributeError):
            # The client went away (EHOSTUNREACH) or stopped reading (EAGAIN at the HWM); or
            # the socket is closed (None): a reply after the serve thread ended.
            self.undeliverable += 1

    def _handle(self, frames: list, router: zmq.Socket) -> None:
        # A DEALER peer sends [id, *body]; a REQ peer [id, b"", *body]: replies mirror it.
        split = 2 if len(frames) > 1 and len(frames[1]) == 0 else 1
        envelope, body = [f.bytes for f in frames[:split]], frames[split:]
        request_id = None
        try:
            try:
                size = sum(len(f) for f in body)
                if size > self._max_bytes:
                    # The header is small and bounded: read the id so the client can match
                    # the error to its request.
                    request_id = _peek_id(body)
                    raise MessageTooLarge(f"message of {size} bytes exceeds the server's limit "
                                          f"of {self._max_bytes} bytes")
                msg = wire.decode_request([f.buffer for f in body])
            except InvalidInput as e:
                raise queries.refused(self, e) from None
            request_id = msg.id
            if isinstance(msg, wire.InferRequest):
                return self._infer(envelope, msg, size)
            reply = queries.answer(self, msg, tuple(envelope), body[0])
            if reply is None:        # model control: answered later (serve/queries.py)
                return
        except RequestError as e:
            reply = wire.encode_error(getattr(e, "request_id", request_id), e)
        except Exception:
            log.exception("request %r failed inside the server", request_id)
            reply = wire.encode_error(request_id, ServerError("internal error handling the "
                                                              "request"))
        self._forward(envelope + reply, router)

    def _unknown_model(self, model: str) -> UnknownModel:
        self.stats.count_bad_request(unknown_model=True)
        return UnknownModel(f"unknown model {model!r}; served: {', '.join(self.models)}")

    def _infer(self, envelope: list[bytes], request: wire.InferRequest, size: int) -> None:
        if request.model not in self.models:
            raise self._unknown_model(request.model)
        # Region inputs become views of their shared memory, claimed until the reply is sent.
        # Output targets: writable views of the client's region, written at reply time.
        used: list = []
        try:
            inputs, used = self.regions.resolve(tuple(envelope), request.inputs)
            views, claimed = self.regions.resolve_targets(tuple(envelope), request.targets)
            used += claimed
            targets = {n: (views[n], ref) for n, ref in request.targets.items()}
        except InvalidInput:
            self.regions.release(used)
            self.stats.count(request.model, "invalid")
            raise
        try:
            self._admit(envelope, request, size, inputs, used, targets)
        except BaseException:
            self.regions.release(used)
            raise

    def _admit(self, envelope: list[bytes], request: wire.InferRequest, size: int,
               inputs: dict, used: list, targets: dict) -> None:
        now = time.monotonic()
        model, deadline_ms = request.model, request.deadline_ms
        info = self.models.get(model)
        if info is None:
            raise self._unknown_model(model)
        problem = info.check_inputs(inputs)
        if problem is None and targets:
            problem = shm.target_problem(info.outputs, {n: v for n, (v, _) in targets.items()})
        if problem is not None:
            self.stats.count(model, "invalid")
            raise InvalidInput(problem)
        if deadline_ms is not None and deadline_ms <= 0:
            self.stats.count(model, "expired")
            raise DeadlineExceeded(f"model {model!r}: deadline_ms={deadline_ms} has already passed")
        deadline_s = None if deadline_ms is None else now + deadline_ms / 1e3
        with self._intake:       # stop() closes intake under this lock: no submit slips past it
            if model not in self.models:         # a reload removed it since the check
                raise self._unknown_model(model)
            if not self._accepting:
                self.stats.count(model, "rejected")
                raise ShuttingDown("the server is shutting down and accepts no new requests")
            if not self.intake.take(size):
                self.stats.count(model, "rejected")
                raise Overloaded(f"model {model!r}: {self.intake.describe(size)}")
            self.residency.submit(Submission(model, inputs, now, deadline_s, request.priority,
                                          reply_to=(envelope, request.id, size, used,
                                                    targets)),
                                   ring=False)    # this thread steps the engine next


def _peek_id(body: list) -> int | None:
    try:
        return wire.decode_header(body[1].buffer)["id"] if len(body) > 1 else None
    except InvalidInput:
        return None


__all__ = ["Server"]
