"""Reloading the config while serving (SIGHUP, `systemctl reload`).

What changes comes from config_diff.diff. The order keeps every request answered and never
lets intake see a model the engine does not know:
1. load the models added, and the new versions of models changed (path, shapes, instances)
   under a backend key of their own (name@N), on this thread: slow, the engine keeps serving;
2. the engine thread adds them to its model set (statistics and health too), hidden from
   intake, and warms each with one synthetic request (every slice runs once, staged with no
   tensors: zeros, as calibration runs do);
3. the engine thread applies SLO/priority changes; then, holding the server's intake lock, it
   admits what intake already checked (on the old versions), points each changed name at its
   new version and replaces the server's model dict in one assignment: from then on new
   models are served, removed ones answer UnknownModel, unchanged ones keep their entries;
4. removed models and replaced versions are unloaded once their last request is answered.
A config that does not validate, a model that fails to load or to warm up: the reload is
refused with one log line and the old set keeps serving. Sections that cannot change live
are reported in one line as needing a restart and left as they were.

Model control (LOAD/UNLOAD over the socket, serve/queries.py) goes through the same steps,
with a target set of its own: the file's entries as last applied plus an overlay of what
was loaded or unloaded over the socket. The overlay is kept across reloads of the file, and
each socket-loaded entry is read again at every reload (a new version is picked up), until
the file's own entry for that name is edited (added, changed, removed): the newer word wins.
It is not saved: a restart serves the file alone.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from edgesched.backends import load_models
from edgesched.config import Config, ModelConfig, load_config, parse_model
from edgesched.engine import Result, Submission
from edgesched.errors import EdgeschedError, ModelChangeRefused, RequestError, UnknownModel
from edgesched.serve.config_diff import ConfigDiff, diff
from edgesched.types import ModelInfo

if TYPE_CHECKING:
    from edgesched.serve.server import Server

log = logging.getLogger("edgesched.reload")
_ENGINE_WAIT_S = 30.0      # an engine step takes milliseconds; past this it is stuck
_VERSIONS = itertools.count(2)   # backend keys of changed models' new versions: name@2, ...


class ReloadRefused(EdgeschedError):
    """A reload that was not applied; the old config keeps serving."""


class Reloader:
    """Reloads `path` (the server's config file) on request; one reload at a time."""

    def __init__(self, server: "Server", path: str | None = None):
        self.server, self.path = server, path or server.config.source
        self._lock = threading.Lock()
        self._wanted = threading.Event()
        self._thread: threading.Thread | None = None
        self._file = {m.name: m for m in server.config.models}   # the file, as last applied
        # name -> (the LOAD entry as sent, as resolved when applied), or None: unloaded.
        self._overlay: dict[str, tuple[dict, ModelConfig] | None] = {}

    def origin(self, name: str) -> str:
        """Who put a served model there: "socket" (LOAD) or "config" (the file)."""
        return "socket" if self._overlay.get(name) is not None else "config"

    def request(self) -> None:
        """Safe in a signal handler: returns at once, the reload runs on its own thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="edgesched-reload",
                                            daemon=True)
            self._thread.start()
        self._wanted.set()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            try:
                self.reload()
            except Exception:
                log.exception("reload failed inside the server; still serving the old config")

    def reload(self) -> ConfigDiff | None:
        """Apply the config file now; the diff applied, or None if it was refused."""
        with self._lock:
            notifier = self.server.notifier
            # sd_notify(3): RELOADING=1 comes with the CLOCK_MONOTONIC time in microseconds.
            notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
            try:
                applied = self._from_file()
            except EdgeschedError as e:
                log.error("reload of %s refused; still serving the old config: %s",
                          self.path, e)
                applied = None
            finally:
                notifier.ready()
            notifier.status(("reloaded: " if applied else "reload refused: ")
                            + f"serving {', '.join(self.server.models)}")
            return applied

    def load(self, entry: dict) -> dict:
        """LOAD: serve a config file's model entry (absolute path) beside the others, or in
        place of the model of that name; ModelChangeRefused (the old set keeps serving)."""
        with self._lock:
            try:
                if not os.path.isabs(str(entry.get("path", "/"))):
                    raise ModelChangeRefused("model.path must be absolute (the server resolves "
                                             f"no path against its own directory), got "
                                             f"{entry['path']!r}")
                model = parse_model(entry, "LOAD", Path("/"))
                overlay = {**self._overlay, model.name: (dict(entry), model)}
                d = self._socket_change(overlay, f"LOAD {model.name}")
            except RequestError:
                raise
            except EdgeschedError as e:
                raise ModelChangeRefused(f"load refused, still serving "
                                         f"{', '.join(self.server.models)}: {e}") from None
        return {"model": model.name, "version": model.version, "change": d.describe()}

    def unload(self, name: str) -> dict:
        """UNLOAD: stop serving `name` (UnknownModel from now on), answer what it holds, then
        unload it; the reply waits for the drain up to server.drain_timeout_s."""
        with self._lock:
            server = self.server
            if name not in server.models:
                raise UnknownModel(f"unknown model {name!r}; served: {', '.join(server.models)}")
            overlay = dict(self._overlay)
            if name in self._file:
                overlay[name] = None
            else:
                overlay.pop(name, None)
            if not self._merge(self._file.values(), overlay):
                raise ModelChangeRefused(f"{name!r} is the last model served; a server serves "
                                         "at least one (load another first)")
            try:
                self._socket_change(overlay, f"UNLOAD {name}")
            except RequestError:
                raise
            except EdgeschedError as e:
                raise ModelChangeRefused(f"unload refused: {e}") from None
            return {"model": name, "drained": self._drained(name)}

    # --- the steps ----------------------------------------------------------------------
    def _from_file(self) -> ConfigDiff:
        new = load_config(self.path)
        entries = {m.name: m for m in new.models}
        # A socket change holds while the file's entry for its name is as it was; an edited
        # entry (or one resolving to a new version) is the newer word. Socket entries are
        # read again: a new version in their directory is picked up too.
        overlay = {n: v for n, v in self._overlay.items() if entries.get(n) == self._file.get(n)}
        socket = {n: None if v is None else (v[0], parse_model(
            v[0], f"model {n!r} loaded over the socket", Path("/"))) for n, v in overlay.items()}
        d = self._apply(dataclasses.replace(new, models=self._merge(new.models, socket)),
                        f"reloaded {self.path}")
        self._file, self._overlay = entries, socket
        return d

    def _socket_change(self, overlay: dict, what: str) -> ConfigDiff:
        new = dataclasses.replace(self.server.config,
                                  models=self._merge(self._file.values(), overlay))
        d = self._apply(new, what)
        self._overlay = overlay
        self.server.notifier.status(f"{what}: serving {', '.join(self.server.models)}")
        return d

    @staticmethod
    def _merge(file_models, overlay: dict) -> tuple[ModelConfig, ...]:
        served = {m.name: m for m in file_models}
        for name, value in overlay.items():
            if value is None:
                served.pop(name, None)
            else:
                served[name] = value[1]
        return tuple(served.values())

    def _drained(self, name: str) -> bool:
        """Wait until the engine has answered every request of `name` and let it go."""
        engine = self.server.engine
        self._on_engine(lambda: None)        # the retire queued by _apply has run
        give_up = time.monotonic() + self.server.config.server.drain_timeout_s
        while name in engine.retiring:
            if time.monotonic() > give_up:
                return False
            time.sleep(0.01)                 # a step is milliseconds; this is a control path
        return True

    def _apply(self, new: Config, what: str) -> ConfigDiff:
        server, engine = self.server, self.server.engine
        old = server.config
        if not new.models:
            raise ReloadRefused("no model would be served (the file's are all unloaded "
                                "over the socket)")
        d = diff(old, new)
        draining = [m.name for m in d.added if m.name in engine.retiring]
        if draining:
            raise ReloadRefused(f"model {draining[0]!r} is still draining from the last "
                                "reload; reload again once it is unloaded")
        if d.restart:
            log.warning("reload: %s changed: needs a restart (left as it was)",
                        ", ".join(d.restart))
        # A changed model's new version loads beside the old one under a key that no config
        # name can be ('@' is not allowed in names), and is warmed there, hidden from intake.
        keys = {m.name: f"{m.name}@{next(_VERSIONS)}" for m in d.reloaded}
        loaded, files = self._load([*d.added, *(dataclasses.replace(m, name=keys[m.name])
                                                for m in d.reloaded)])
        self._on_engine(lambda: engine.set_models({**engine.models, **loaded},
                                                  fresh=tuple(loaded)))
        problem = self._warm(loaded) or server.residency.refuses(
            d.added, d.retuned, d.removed)
        if problem is not None:
            for name in loaded:
                self._on_engine(lambda n=name: engine.retire(n))
            self._prune()
            raise ReloadRefused(problem)
        added = {m.name: loaded[m.name] for m in d.added}
        retuned = {m.name: dataclasses.replace(server.models[m.name], slo_ms=m.slo_ms,
                                               priority=m.priority) for m in d.retuned}
        versions = {name: (dataclasses.replace(loaded[key], name=name), key)
                    for name, key in keys.items()}
        # Warm-up counted as requests: the added models' statistics start at zero here.
        self._on_engine(lambda: engine.set_models({**engine.models, **retuned},
                                                  fresh=tuple(added)))
        served: dict[str, ModelInfo] = {}
        for m in new.models:
            served[m.name] = (added.get(m.name) or retuned.get(m.name)
                              or versions.get(m.name, (server.models.get(m.name),))[0])

        def publish() -> None:
            server.models = served

        def switch() -> None:
            # Under the intake lock (_admit re-checks the name under it) the engine admits
            # what intake checked against the old models, then switches versions, then intake
            # sees the new set: one step for every request.
            with server._intake:
                engine.switch(versions, publish)
        self._on_engine(switch)
        for name in d.removed:
            engine.call_soon(lambda n=name: engine.retire(n))
        engine.call_soon(lambda: server.residency.drop(d.removed, keys))
        server.config = dataclasses.replace(old, models=new.models)
        # Added models come under the memory budget; new versions stay outside it.
        server.residency.adopt(d.added, files, d.retuned)
        self._prune()
        log.info("%s: %s", what, d.describe())
        return d

    def _prune(self) -> None:
        """Model files kept in RAM for evictions that no longer need them go (residency):
        on the engine thread, after the retires queued before (prune never waits)."""
        self.server.engine.call_soon(self.server.residency.prune)

    def _load(self, entries: list) -> tuple[dict[str, ModelInfo], dict[str, frozenset]]:
        """Load `entries` (off the engine thread): what each loaded, and the files each read
        (for the memory budget); on a failure unload those loaded."""
        loaded: dict[str, ModelInfo] = {}
        read: dict[str, frozenset] = {}
        residency = self.server.residency
        for entry in entries:
            try:
                with residency.loading(entry.name), residency.recorded() as files:
                    loaded.update(load_models(self.server.backend, [entry]))
                read[entry.name] = frozenset(files)
            except EdgeschedError:
                backend = self.server.backend
                for name in loaded:      # a model that failed to load holds nothing
                    self._on_engine(lambda n=name: backend.unload(n))
                self._prune()            # nor do its files
                raise
        return loaded, read

    def _warm(self, added: dict[str, ModelInfo]) -> str | None:
        """One synthetic request per added model; what went wrong, or None."""
        engine, waits = self.server.engine, {}
        for name in added:
            done, box = threading.Event(), []
            engine.submit(Submission(name, {}, time.monotonic(),
                                     reply_to=_Warmup(done, box)))
            waits[name] = (done, box)
        for name, (done, box) in waits.items():
            # Each slice may take up to the launch timeout; 10 s more for queueing behind
            # the requests already there.
            limit_s = (engine.launch_timeout_s or _ENGINE_WAIT_S) * added[name].num_slices + 10
            if not done.wait(limit_s):
                return f"model {name!r}: its warm-up request took longer than {limit_s:g} s"
            if box[0].error is not None:
                return f"model {name!r}: its warm-up request failed: {box[0].error}"
        return None

    def _on_engine(self, fn: Callable[[], None]) -> None:
        """Run fn on the engine thread between two steps and wait for it."""
        done, failed = threading.Event(), []

        def call() -> None:
            try:
                fn()
            except Exception as e:     # reported here; the engine thread keeps stepping
                failed.append(e)
            finally:
                done.set()
        self.server.engine.call_soon(call)
        if not done.wait(_ENGINE_WAIT_S):
            raise ReloadRefused(f"the engine thread did not respond in {_ENGINE_WAIT_S:g} s")
        if failed:
            raise failed[0]


class _Warmup:
    """reply_to of a warm-up request: the server hands its Result here, not to a client."""

    def __init__(self, done: threading.Event, box: list):
        self._done, self._box = done, box

    def __call__(self, result: Result) -> None:
        self._box.append(result)
        self._done.set()


__all__ = ["ReloadRefused", "Reloader"]
