"""Config loading: defaults, path resolution, and one clear line for every mistake."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import yaml

from edgesched.config import (
    SYSTEMD_ENDPOINT,
    Config,
    DeviceConfig,
    LimitsConfig,
    ModelConfig,
    SchedulerConfig,
    ServerConfig,
    default_endpoint,
    load_config,
    parse_config,
    validate_endpoint,
)
from edgesched.errors import ConfigError, EdgeschedError
from edgesched.types import BackendName, PolicyName, Priority, TelemetrySource

REPO = Path(__file__).resolve().parents[2]
DEFAULT_YAML = REPO / "configs" / "default.yaml"
EXAMPLES = ("convnet", "depthwise", "attention")
# What default.yaml serves for each example: convnet as its shipped 3-slice directory.
SERVED = {"convnet": "convnet_sliced", "depthwise": "depthwise.onnx",
          "attention": "attention.onnx"}
DROP = object()  # in an override: remove the key


@pytest.fixture(autouse=True)
def _fixed_runtime_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """tmp_path with model files of every accepted kind next to where configs are written."""
    for name in ("a.onnx", "b.engine", "c.plan", "notes.txt"):
        (tmp_path / name).write_bytes(b"\0")
    (tmp_path / "sliced").mkdir()
    (tmp_path / "sliced" / "manifest.json").write_text("{}")
    (tmp_path / "empty_dir").mkdir()
    return tmp_path


def model(**overrides: object) -> dict:
    m = {"name": "a", "path": "a.onnx", "slo_ms": 33}
    m.update(overrides)
    return {k: v for k, v in m.items() if v is not DROP}


def write(directory: Path, data: object, name: str = "config.yaml") -> Path:
    path = directory / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def config_with(**overrides: object) -> dict:
    data = {"models": [model()]}
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not DROP}


def assert_one_line(err: ConfigError, path: Path, key: str, words: tuple[str, ...]) -> None:
    message = str(err)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}: expected "), message
    assert ", got " in message, message
    for word in words:
        assert word in message, (word, message)


# --- the shipped config -------------------------------------------------------------------

def test_default_yaml_parses_with_stand_in_model_files(tmp_path):
    # Checks everything but the real example files, which another tool generates.
    (tmp_path / "configs").mkdir()
    (tmp_path / "engines" / "examples").mkdir(parents=True)
    for served in SERVED.values():
        stand_in = tmp_path / "engines" / "examples" / served
        if served.endswith(".onnx"):
            stand_in.write_bytes(b"\0")
        else:
            stand_in.mkdir()
            (stand_in / "manifest.json").write_text("{}")
    path = write(tmp_path / "configs", DEFAULT_YAML.read_text(), "default.yaml")

    cfg = load_config(path)

    assert cfg.device == DeviceConfig(BackendName.ONNXRUNTIME, "orin-nano", 4, 1)
    assert cfg.server.endpoint == default_endpoint()
    assert cfg.scheduler.policy is PolicyName.PRIORITY
    assert cfg.limits == LimitsConfig()
    assert cfg.profile is None and cfg.telemetry is TelemetrySource.AUTO
    assert [(m.name, m.slo_ms, m.priority, m.instances) for m in cfg.models] == [
        ("convnet", 50.0, Priority.REALTIME, 1), ("depthwise", 100.0, Priority.REALTIME, 1),
        ("attention", 250.0, Priority.BEST_EFFORT, 1)]
    assert [m.path for m in cfg.models] == [
        tmp_path / "engines" / "examples" / SERVED[n] for n in EXAMPLES]


def test_default_yaml_loads_in_place():
    cfg = load_config(DEFAULT_YAML)
    assert [m.path for m in cfg.models] == [
        REPO / "engines" / "examples" / SERVED[n] for n in EXAMPLES]


# --- defaults, types, paths ---------------------------------------------------------------

def test_omitted_sections_take_defaults(workdir):
    cfg = load_config(write(workdir, config_with()))
    assert cfg.device == DeviceConfig() and cfg.server == ServerConfig()
    assert cfg.scheduler == SchedulerConfig() and cfg.limits == LimitsConfig()
    assert cfg.device.backend is BackendName.AUTO and cfg.device.streams == 4
    assert cfg.server.endpoint == default_endpoint()
    assert cfg.server.drain_timeout_s == 10.0
    assert cfg.scheduler.policy is PolicyName.PRIORITY
    assert (cfg.limits.max_message_bytes, cfg.limits.queue_depth) == (64 * 1024 * 1024, 64)
    assert cfg.profile is None and cfg.telemetry is TelemetrySource.AUTO
    assert cfg.models == (ModelConfig("a", workdir / "a.onnx", 33.0),)
    assert cfg.models[0].priority is Priority.BEST_EFFORT and cfg.models[0].instances == 1
    assert cfg.source == str(workdir / "config.yaml")


def test_empty_sections_take_defaults(workdir):
    text = ("device:\nserver:\nscheduler:\nlimits:\n"
            "models:\n  - {name: a, path: a.onnx, slo_ms: 1}\n")
    cfg = load_config(write(workdir, text))
    assert cfg.device == DeviceConfig() and cfg.limits == LimitsConfig()


def test_every_key_is_read_into_typed_values(workdir):
    data = {
        "device": {"backend": "sim", "sim_device": "xavier-agx", "streams": 32,
                   "cpu_threads_per_stream": 64},
        "server": {"endpoint": "tcp://127.0.0.1:5555", "drain_timeout_s": 2},
        "scheduler": {"policy": "interference"},
        "limits": {"max_message_bytes": 1024, "queue_depth": 1},
        "profile": "profile.json",
        "telemetry": "none",
        "models": [model(name="det.v2-x_1", priority="realtime", instances=16, slo_ms=0.5),
                   model(name="b", path="b.engine"), model(name="c", path="c.plan"),
                   model(name="s", path="sliced")],
    }
    cfg = load_config(write(workdir, data))
    assert cfg.device == DeviceConfig(BackendName.SIM, "xavier-agx", 32, 64)
    assert cfg.server == ServerConfig("tcp://127.0.0.1:5555", 2.0)
    assert isinstance(cfg.server.drain_timeout_s, float)
    assert cfg.scheduler.policy is PolicyName.INTERFERENCE
    assert cfg.limits == LimitsConfig(1024, 1)
    assert cfg.profile == workdir / "profile.json"  # need not exist
    assert cfg.telemetry is TelemetrySource.NONE
    assert cfg.models[0] == ModelConfig("det.v2-x_1", workdir / "a.onnx", 0.5,
                                        Priority.REALTIME, 16)
    assert [m.path.name for m in cfg.models[1:]] == ["b.engine", "c.plan", "sliced"]


def test_sections_are_frozen(workdir):
    cfg = load_config(write(workdir, config_with()))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.device.streams = 8  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.models = ()  # type: ignore[misc]


def test_relative_paths_resolve_against_the_config_directory(tmp_path, monkeypatch):
    (tmp_path / "engines").mkdir()
    (tmp_path / "engines" / "m.onnx").write_bytes(b"\0")
    (tmp_path / "configs").mkdir()
    data = {"profile": "../engines/profile.json",
            "models": [model(path="../engines/m.onnx")]}
    write(tmp_path / "configs", data)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    cfg = load_config(Path("..") / "configs" / "config.yaml")  # a relative config path too

    assert cfg.models[0].path == tmp_path / "engines" / "m.onnx"
    assert cfg.models[0].path.is_absolute() and ".." not in cfg.models[0].path.parts
    assert cfg.profile == tmp_path / "engines" / "profile.json"


def test_absolute_and_home_relative_paths(workdir, monkeypatch):
    monkeypatch.setenv("HOME", str(workdir))
    data = config_with(models=[model(path=str(workdir / "a.onnx")),
                               model(name="b", path="~/b.engine")])
    cfg = parse_config(data, "inline", Path("/nonexistent"))
    assert [m.path for m in cfg.models] == [workdir / "a.onnx", workdir / "b.engine"]
    assert cfg.source == "inline"


def test_parse_config_takes_a_plain_mapping(workdir):
    cfg = parse_config({"models": [model()]}, "x.yaml", workdir)
    assert isinstance(cfg, Config) and cfg.models[0].path == workdir / "a.onnx"


# --- every mistake: one line naming the file and key ---------------------------------------

BAD = [
    # (id, overrides of a valid config, key path, words the message must contain)
    ("top-typo", {"model": [model()]}, "model", ("unknown key 'model'", "did you mean 'models'")),
    ("device-typo", {"device": {"strems": 4}}, "device.strems",
     ("unknown key 'strems'", "did you mean 'streams'", "backend", "cpu_threads_per_stream")),
    ("device-not-mapping", {"device": "tensorrt"}, "device", ("mapping", "'tensorrt'")),
    ("streams-bool", {"device": {"streams": True}}, "device.streams", ("integer", "True")),
    ("streams-zero", {"device": {"streams": 0}}, "device.streams", ("1 to 32", "0")),
    ("streams-big", {"device": {"streams": 33}}, "device.streams", ("1 to 32", "33")),
    ("streams-float", {"device": {"streams": 4.0}}, "device.streams", ("integer", "4.0")),
    ("streams-str", {"device": {"streams": "4"}}, "device.streams", ("integer", "'4'")),
    ("threads-big", {"device": {"cpu_threads_per_stream": 65}},
     "device.cpu_threads_per_stream", ("1 to 64",)),
    ("backend", {"device": {"backend": "cuda"}}, "device.backend",
     ("auto, onnxruntime, tensorrt, sim", "'cuda'")),
    ("backend-case", {"device": {"backend": "TensorRT"}}, "device.backend", ("tensorrt",)),
    ("sim-device", {"device": {"sim_device": "orin"}}, "device.sim_device",
     ("orin-agx, orin-nx, orin-nano, xavier-agx",)),
    ("endpoint-scheme", {"server": {"endpoint": "udp://1.2.3.4:5"}}, "server.endpoint",
     ("ipc://", "tcp://", "inproc://")),
    ("endpoint-no-host", {"server": {"endpoint": "tcp://:5555"}}, "server.endpoint",
     ("host", "1 to 65535")),
    ("endpoint-type", {"server": {"endpoint": 5555}}, "server.endpoint", ("ipc://", "5555")),
    ("drain-zero", {"server": {"drain_timeout_s": 0}}, "server.drain_timeout_s", ("> 0",)),
    ("drain-inf", {"server": {"drain_timeout_s": float("inf")}}, "server.drain_timeout_s",
     ("finite",)),
    ("drain-bool", {"server": {"drain_timeout_s": True}}, "server.drain_timeout_s", ("number",)),
    ("server-typo", {"server": {"endpiont": None}}, "server.endpiont",
     ("did you mean 'endpoint'",)),
    ("policy", {"scheduler": {"policy": "round-robin"}}, "scheduler.policy",
     ("fifo, greedy, priority, interference",)),
    ("max-message", {"limits": {"max_message_bytes": 1000}}, "limits.max_message_bytes",
     (">= 1024",)),
    ("queue-depth", {"limits": {"queue_depth": 0}}, "limits.queue_depth", (">= 1",)),
    ("limits-typo", {"limits": {"queue": 3}}, "limits.queue", ("queue_depth",)),
    ("telemetry", {"telemetry": "jetson"}, "telemetry",
     ("auto, jtop, sysfs, tegrastats, nvml, none",)),
    ("profile-type", {"profile": 5}, "profile", ("path", "5")),
    ("models-missing", {"models": DROP}, "models", ("at least one model", "got nothing")),
    ("models-empty", {"models": []}, "models", ("at least one model", "[]")),
    ("models-null", {"models": None}, "models", ("at least one model", "None")),
    ("models-mapping", {"models": {"name": "a"}}, "models", ("list",)),
    ("model-not-mapping", {"models": ["a.onnx"]}, "models[0]", ("mapping", "name, path")),
    ("model-typo", {"models": [model(slo=3)]}, "models[0].slo", ("did you mean 'slo_ms'",)),
    ("name-missing", {"models": [model(name=DROP)]}, "models[0].name", ("got nothing",)),
    ("name-bad", {"models": [model(name="my model")]}, "models[0].name",
     ("[A-Za-z0-9]", "'my model'")),
    ("name-dash", {"models": [model(name="-x")]}, "models[0].name", ("'-x'",)),
    ("name-long", {"models": [model(name="a" * 65)]}, "models[0].name", ("{0,63}",)),
    ("name-int", {"models": [model(name=5)]}, "models[0].name", ("5",)),
    ("name-duplicate", {"models": [model(), model(path="b.engine")]}, "models[1].name",
     ("models[0]", "'a'")),
    ("slo-missing", {"models": [model(slo_ms=DROP)]}, "models[0].slo_ms", ("got nothing",)),
    ("slo-zero", {"models": [model(), model(name="b", slo_ms=0)]}, "models[1].slo_ms",
     ("> 0", "0")),
    ("slo-str", {"models": [model(slo_ms="fast")]}, "models[0].slo_ms", ("number", "'fast'")),
    ("slo-bool", {"models": [model(slo_ms=True)]}, "models[0].slo_ms", ("True",)),
    ("slo-nan", {"models": [model(slo_ms=float("nan"))]}, "models[0].slo_ms", ("nan",)),
    ("priority", {"models": [model(priority="high")]}, "models[0].priority",
     ("realtime, best_effort", "'high'")),
    ("instances-zero", {"models": [model(instances=0)]}, "models[0].instances", ("1 to 16",)),
    ("instances-big", {"models": [model(instances=17)]}, "models[0].instances", ("1 to 16",)),
    ("instances-bool", {"models": [model(instances=True)]}, "models[0].instances", ("True",)),
    ("path-missing-key", {"models": [model(path=DROP)]}, "models[0].path", ("got nothing",)),
    ("path-empty", {"models": [model(path="")]}, "models[0].path", ("path",)),
    ("path-not-found", {"models": [model(path="missing.onnx")]}, "models[0].path",
     ("'missing.onnx'", "does not exist", "manifest.json")),
    ("path-wrong-kind", {"models": [model(path="notes.txt")]}, "models[0].path",
     (".onnx, .engine or .plan", "'notes.txt'")),
    ("path-dir-no-manifest", {"models": [model(path="empty_dir")]}, "models[0].path",
     ("without manifest.json",)),
]


@pytest.mark.parametrize("overrides, key, words", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_config_is_one_clear_line(workdir, overrides, key, words):
    path = write(workdir, config_with(**overrides))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert_one_line(info.value, path, key, words)
    assert isinstance(info.value, EdgeschedError) and info.value.key == key


@pytest.mark.parametrize("text, key, words", [
    ("device:\n  streams: 4\n backend: sim\n", "line 3, column 2", ("valid YAML",)),
    ("models: [1, 2\n", "line 2, column 1", ("valid YAML",)),
    ("device: {}\nmodels: []\ndevice: {}\n", "line 3, column 1", ("duplicate key 'device'",)),
    ("- a\n- b\n", "top level", ("mapping", "device", "models", "['a', 'b']")),
    ("", "top level", ("mapping", "empty file")),
    ("# only a comment\n", "top level", ("empty file",)),
], ids=["indent", "unclosed", "duplicate-key", "list", "empty", "comment-only"])
def test_bad_yaml_is_one_clear_line(tmp_path, text, key, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert_one_line(info.value, path, key, words)


def test_merge_keys_may_be_overridden(workdir):
    text = ("base: &base {name: a, path: a.onnx, slo_ms: 10}\n"
            "models:\n  - {<<: *base, slo_ms: 20}\n")
    with pytest.raises(ConfigError, match="unknown key 'base'"):  # but not a duplicate key
        load_config(write(workdir, text))


def test_unreadable_files(tmp_path):
    for path, words in [(tmp_path / "nope.yaml", ("No such file",)),
                        (tmp_path, ("directory",)),
                        (tmp_path / "latin1.yaml", ("UTF-8",))]:
        if path.name == "latin1.yaml":
            path.write_bytes(b"models: caf\xe9\n")
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert_one_line(info.value, path, "file", words)


def test_long_values_are_shortened_in_messages(workdir):
    path = write(workdir, config_with(telemetry="x" * 500))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(str(info.value)) < 250 and str(info.value).endswith("...")


# --- endpoints -------------------------------------------------------------------------------

@pytest.mark.parametrize("endpoint", [
    "ipc:///run/edgesched/edgesched.sock", "ipc://relative.sock", "ipc://@abstract",
    "tcp://127.0.0.1:5555", "tcp://localhost:1", "tcp://*:65535", "tcp://0.0.0.0:5555",
    "tcp://[::1]:5555", "tcp://eth0:5555", "inproc://engine", SYSTEMD_ENDPOINT,
])
def test_valid_endpoints_are_returned_unchanged(endpoint):
    assert validate_endpoint(endpoint, "command line", "--endpoint") == endpoint


@pytest.mark.parametrize("endpoint, words", [
    ("", ("ipc://",)), ("/run/x.sock", ("ipc://",)), ("ipc://", ("ipc://",)),
    ("inproc://", ("inproc://",)), ("udp://1.2.3.4:5", ("tcp://",)), ("IPC:///x", ("ipc://",)),
    ("tcp://127.0.0.1", ("port",)), ("tcp://:5555", ("host",)), ("tcp://5555", ("host",)),
    ("tcp://127.0.0.1:0", ("1 to 65535",)), ("tcp://127.0.0.1:65536", ("1 to 65535",)),
    ("tcp://127.0.0.1:*", ("1 to 65535",)), ("tcp://127.0.0.1:http", ("port",)),
    ("tcp://::1:5555", ("host",)), ("tcp://127.0.0.1:5555/", ("port",)),
    ("tcp://127.0.0.1:5555 ", ("port",)),
    ("ipc:///" + "d" * 120, ("107 bytes",)), (None, ("ipc://",)),
])
def test_invalid_endpoints(endpoint, words):
    with pytest.raises(ConfigError) as info:
        validate_endpoint(endpoint, "command line", "--endpoint")  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message and message.startswith("command line: --endpoint: expected ")
    for word in words:
        assert word in message, (word, message)


def test_default_endpoint_uses_xdg_runtime_dir(monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert default_endpoint() == "ipc:///run/user/1000/edgesched/edgesched.sock"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000/")
    assert default_endpoint() == "ipc:///run/user/1000/edgesched/edgesched.sock"


@pytest.mark.parametrize("value", [None, "", "relative/dir"])
def test_default_endpoint_falls_back_to_tmp(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    else:
        monkeypatch.setenv("XDG_RUNTIME_DIR", value)
    expected = f"ipc:///tmp/edgesched-{os.getuid()}/edgesched.sock"
    assert default_endpoint() == expected
    assert validate_endpoint(expected, "x", "y") == expected


def test_null_endpoint_means_default_and_explicit_is_kept(workdir, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/42")
    cfg = load_config(write(workdir, config_with(server={"endpoint": None})))
    assert cfg.server.endpoint == "ipc:///run/user/42/edgesched/edgesched.sock"
    cfg = load_config(write(workdir, config_with(server={"endpoint": SYSTEMD_ENDPOINT})))
    assert cfg.server.endpoint == SYSTEMD_ENDPOINT
