"""YAML config file -> typed, frozen sections; each part of edgesched receives only its own.

Every problem raises ConfigError naming the file and the key path (`models[1].slo_ms`). The
first problem found is raised; nothing is dropped, defaulted or coerced silently.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgesched.config_checks import (  # noqa: F401 (re-exported: workload.py checks alike)
    _ABSENT,
    MODEL_SUFFIXES,
    _endpoint,
    _got,
    _integer,
    _Invalid,
    _model_path,
    _name,
    _one_of,
    _positive,
    _resolve,
    _shapes,
    _Text,
    check_batch,
    validate_endpoint,
)
from edgesched.devices import MODULES
from edgesched.endpoints import (  # noqa: F401 (SYSTEMD_ENDPOINT, default_endpoint: re-exported)
    SYSTEMD_ENDPOINT,
    default_endpoint,
    group_id,
    metrics_address,
    read_server_keys,
    require_keys,
)
from edgesched.errors import ConfigError
from edgesched.modelfiles import versions
from edgesched.shapes import ShapeRange
from edgesched.types import BackendName, BatchConfig, PolicyName, Priority, TelemetrySource

SIM_DEVICES = MODULES   # the modules edgesched has figures for (edgesched.devices)
MODULE_AUTO = "auto"    # device.module: read the board's device-tree model string


@dataclass(frozen=True)
class DeviceConfig:
    backend: BackendName = BackendName.AUTO  # auto: tensorrt if importable, else onnxruntime
    sim_device: str = "orin-nano"            # backend sim only: the module it simulates
    streams: int = 4                         # CUDA streams (worker threads on CPU)
    cpu_threads_per_stream: int = 1          # ONNX Runtime intra-op threads per stream
    # The Jetson module this runs on, for cost-model estimates and profile matching on every
    # backend but sim: one of MODULES, or auto (the device tree; edgesched.profiles).
    module: str = MODULE_AUTO


@dataclass(frozen=True)
class ServerConfig:
    endpoint: str = field(default_factory=default_endpoint)  # a zmq endpoint, never None
    drain_timeout_s: float = 10.0            # on SIGTERM: time to finish in-flight requests
    socket_group: str | int | None = None    # ipc: the group whose members may connect
    curve_secret_key: Path | None = None     # the server's CURVE certificate (.key_secret)
    curve_authorized_keys: Path | None = None  # directory of accepted client public keys
    metrics: str | None = None               # Prometheus /metrics at "HOST:PORT" (None: off)
    # Model control (LOAD/UNLOAD): ipc peers of this group, and CURVE clients whose public
    # key is in this directory, besides root and the server's own user (serve/access.py).
    admin_group: str | int | None = None
    admin_keys: Path | None = None


@dataclass(frozen=True)
class SchedulerConfig:
    policy: PolicyName = PolicyName.PRIORITY
    tolerance: float = 1.10        # interference: realtime slowdown allowed from co-running
    early_reject: bool = False     # interference: refuse at once what cannot meet its deadline

    def policy_options(self) -> dict:
        """The settings the chosen policy takes (only `interference` has any)."""
        if self.policy is PolicyName.INTERFERENCE:
            return {"tolerance": self.tolerance, "early_reject": self.early_reject}
        return {}


@dataclass(frozen=True)
class LimitsConfig:
    max_message_bytes: int = 64 * 1024 * 1024  # one request message, all frames together
    queue_depth: int = 64                      # queued requests per model before Overloaded
    # Bytes of request tensors the server may hold at once (admitted and not yet answered, plus
    # the ROUTER's per-peer queue it sizes): past it, Overloaded at once. >= max_message_bytes.
    intake_bytes: int = 256 * 1024 * 1024
    launch_timeout_s: float = 10.0             # one slice launch longer than this fails its
                                               # request; the stream stays held until it ends
    unhealthy_after: int = 3                   # consecutive failed launches -> model unhealthy
    unhealthy_retry_s: float = 5.0             # an unhealthy model gets one probe this often
    drift_threshold: float = 0.20              # |measured/profiled slice time - 1| that is drift
    drift_sustain_s: float = 10.0              # ... when it lasts this long (then logged once)
    # MiB all loaded models may hold (serve/residency.py): realtime ones stay loaded, best-effort
    # ones are evicted least-recently-used to fit. None (absent): no budget, all stay loaded.
    device_memory_mb: float | None = None


@dataclass(frozen=True)
class ModelConfig:
    name: str
    path: Path                               # absolute; a .onnx/.engine/.plan file or sliced dir
    slo_ms: float
    priority: Priority = Priority.BEST_EFFORT
    instances: int = 1                       # concurrent requests one slice may run at once
    # input -> fixed shape or (min, opt, max) range: what costs are estimated at (opt) and
    # what the server accepts (edgesched.shapes); inputs left out take what the model allows
    shapes: dict[str, ShapeRange] = field(default_factory=dict, hash=False)
    batch: BatchConfig | None = None         # batch: {max, wait_ms}; None: off (check_batch)
    # The numbered version served when the entry's path is a directory of versions (then
    # `path` is the model inside it); None for a plain path. In a file: the pinned one.
    version: int | None = None


@dataclass(frozen=True, kw_only=True)
class Config:
    device: DeviceConfig = field(default_factory=DeviceConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    models: tuple[ModelConfig, ...]
    profile: Path | None = None              # absolute; may not exist yet (calibrate writes it)
    telemetry: TelemetrySource = TelemetrySource.AUTO
    source: str = "<config>"                 # the file it came from, for messages


# --- sections: key -> check tables, defaults taken from the dataclasses ---------------------

_Checks = Mapping[str, Callable[[Any], Any]]

_DEVICE: _Checks = {"backend": _one_of(BackendName), "module": _one_of((MODULE_AUTO, *MODULES)),
                    "sim_device": _one_of(SIM_DEVICES), "streams": _integer(1, 32),
                    "cpu_threads_per_stream": _integer(1, 64)}


def _group(v: Any) -> str | int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise _Invalid("a group name or number", v)
    try:
        group_id(v)
    except KeyError:
        raise _Invalid("a group that exists on this machine", v) from None
    return v


def _server_checks(base_dir: Path) -> _Checks:
    def optional_path(v: Any) -> Path | None:
        return None if v is None else _resolve(v, base_dir)
    return {"endpoint": lambda v: default_endpoint() if v is None else _endpoint(v),
            "drain_timeout_s": _positive, "socket_group": _group,
            "curve_secret_key": optional_path, "curve_authorized_keys": optional_path,
            "metrics": _metrics, "admin_group": _group, "admin_keys": optional_path}


def _metrics(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise _Invalid("null (off), PORT or HOST:PORT", v)
    try:
        metrics_address(str(v))
    except ValueError as e:
        raise _Invalid(str(e), v) from None
    return str(v)


def _server(source: str, data: Any, base_dir: Path) -> ServerConfig:
    """The server section; CURVE keys come as a loadable pair, and a bind beyond loopback
    needs them."""
    server = ServerConfig(**_fields(source, "server", {} if data is None else data, ServerConfig,
                                    _server_checks(base_dir)))
    given = [k for k in ("curve_secret_key", "curve_authorized_keys") if getattr(server, k)]
    if len(given) == 1:
        missing = ({"curve_secret_key", "curve_authorized_keys"} - set(given)).pop()
        raise ConfigError(source, f"server.{missing}", f"a path, as server.{given[0]} is set")
    keys = None
    if given:
        try:
            keys = read_server_keys(server.curve_secret_key, server.curve_authorized_keys)
        except (OSError, ValueError) as e:
            raise ConfigError(source, "server.curve_secret_key", "a CURVE certificate pair "
                              "written by `edgesched keys`", _Text(str(e).splitlines()[0])) \
                from None
    require_keys(server.endpoint, keys, source, "server.endpoint")
    if server.admin_keys is not None and keys is None:
        raise ConfigError(source, "server.admin_keys", "server.curve_secret_key and "
                          "server.curve_authorized_keys too (admin keys are CURVE keys)")
    return server


def _tolerance(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 1.0 <= v <= 3.0:
        raise _Invalid("a slowdown factor from 1.0 to 3.0", v)
    return float(v)


def _boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _Invalid("true or false", v)
    return v


_SCHEDULER: _Checks = {"policy": _one_of(PolicyName), "tolerance": _tolerance,
                       "early_reject": _boolean}
_LIMITS: _Checks = {"max_message_bytes": _integer(1024), "intake_bytes": _integer(1024),
                    "queue_depth": _integer(1),
                    "launch_timeout_s": _positive, "unhealthy_after": _integer(1),
                    "unhealthy_retry_s": _positive, "drift_threshold": _positive,
                    "drift_sustain_s": _positive, "device_memory_mb": _positive}


def _join(prefix: str, key: object) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _fields(source: str, prefix: str, data: Any, cls: type, checks: _Checks) -> dict[str, Any]:
    """Checked keyword arguments for `cls` from mapping `data`; omitted keys keep defaults."""
    if not isinstance(data, Mapping):
        got = _Text("an empty file") if data is None and not prefix else _got(data)
        raise ConfigError(source, prefix or "top level",
                          f"a mapping with keys {', '.join(checks)}", got)
    for key in data:
        if key not in checks:
            close = difflib.get_close_matches(str(key), checks, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(source, _join(prefix, key), f"one of the keys {', '.join(checks)}",
                              _Text(f"unknown key {_got(key)}{hint}"))
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    out = {}
    for key, check in checks.items():
        if key in data or key in required:
            try:
                out[key] = check(data.get(key, _ABSENT))
            except _Invalid as e:
                raise ConfigError(source, _join(prefix, key), e.args[0], _got(e.args[1])) from None
    return out


def _models(source: str, data: Any, base_dir: Path) -> tuple[ModelConfig, ...]:
    if not isinstance(data, (list, tuple)) or not data:
        raise _Invalid("a list of at least one model", data)
    models: list[ModelConfig] = []
    for i, entry in enumerate(data):
        model = parse_model(entry, source, base_dir, f"models[{i}]")
        for j, earlier in enumerate(models):
            if earlier.name == model.name:
                raise ConfigError(source, f"models[{i}].name",
                                  f"a name not already used by models[{j}]", model.name)
        models.append(model)
    return tuple(models)


def parse_model(entry: object, source: str, base_dir: Path, key: str = "model") -> ModelConfig:
    """One model entry as in a config file's `models:` (also model control's LOAD), checked
    and its numbered version resolved (modelfiles/versions.py)."""
    checks: _Checks = {"name": _name, "path": lambda v: _model_path(v, base_dir),
                       "slo_ms": _positive, "priority": _one_of(Priority),
                       "instances": _integer(1, 16), "shapes": _shapes,
                       "version": _integer(0), "batch": check_batch}
    model = ModelConfig(**_fields(source, key, entry, ModelConfig, checks))
    if not versions.is_versioned(model.path):
        if model.version is not None:
            raise ConfigError(source, f"{key}.version", "a path that is a directory of numbered "
                              "versions (1/, 2/, ...)", _Text(str(model.path)))
        return model
    try:
        number, path = versions.resolve(model.path, model.version)
    except versions.VersionError as e:
        raise ConfigError(source, f"{key}.path" if model.version is None else f"{key}.version",
                          "a numbered version directory holding one model", _Text(str(e))) \
            from None
    return dataclasses.replace(model, path=path, version=number)


def _limits(source: str, limits: LimitsConfig) -> LimitsConfig:
    # One message must fit the byte budget, or a valid request could never be admitted.
    if limits.intake_bytes < limits.max_message_bytes:
        raise ConfigError(source, "limits.intake_bytes",
                          f"an integer >= limits.max_message_bytes ({limits.max_message_bytes})",
                          limits.intake_bytes)
    return limits


def parse_config(data: object, source: str, base_dir: Path) -> Config:
    """A Config from loaded YAML; relative paths are resolved against `base_dir`."""
    def section(name: str, cls: type, checks: _Checks) -> Callable[[Any], Any]:
        # `device:` with every key commented out parses as None: that means "all defaults".
        return lambda v: cls(**_fields(source, name, {} if v is None else v, cls, checks))

    checks: _Checks = {
        "device": section("device", DeviceConfig, _DEVICE),
        "server": lambda v: _server(source, v, base_dir),
        "scheduler": section("scheduler", SchedulerConfig, _SCHEDULER),
        "limits": lambda v: _limits(source, section("limits", LimitsConfig, _LIMITS)(v)),
        "profile": lambda v: None if v is None else _resolve(v, base_dir),
        "telemetry": _one_of(TelemetrySource),
        "models": lambda v: _models(source, v, base_dir),
    }
    return Config(**_fields(source, "", data, Config, checks), source=source)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects repeated keys, which PyYAML would let the last one win."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Any:
        seen = set()
        for key_node, _ in node.value:
            # Merge keys (`<<: *base`) may be overridden on purpose; only literal repeats count.
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def load_config(path: str | os.PathLike) -> Config:
    """Read and validate a YAML config file."""
    return parse_config(read_yaml(path), os.fspath(path), Path(path).parent)


def read_yaml(path: str | os.PathLike) -> Any:
    """A YAML file's data (duplicate keys refused); ConfigError, one line, if unreadable."""
    source = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(source, "file", "a readable UTF-8 YAML file", _Text(reason)) from e
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "file"
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(source, where, "valid YAML",
                          _Text("a syntax error: " + " ".join(problem.split()))) from e
    return data
