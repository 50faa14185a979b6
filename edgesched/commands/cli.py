"""The `edgesched` command. Every user error ends in one line on stderr and exit status 2."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import re
import signal
import sys
import threading
from pathlib import Path

from edgesched.commands.models import add_parser as add_models_parser
from edgesched.commands.models import run as run_models
from edgesched.commands.table import format_table
from edgesched.config import default_endpoint, load_config, validate_endpoint
from edgesched.errors import ConfigError, EdgeschedError
from edgesched.paths import default_config
from edgesched.sched import POLICIES
from edgesched.version import __version__

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage block is one `--help` away)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _endpoint(value: str) -> str:
    try:
        return validate_endpoint(value, "--endpoint", "endpoint")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(f"expected {e.expected}, got {value!r}") from None


def _metrics(value: str) -> str:
    from edgesched.endpoints import metrics_address
    try:
        metrics_address(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected {e}, got {value!r}") from None
    return value


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if not (math.isfinite(value) and value > 0):     # nan and inf are not durations
            raise ValueError(text)
        return value
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _int_range(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {low}..{high}, got {value}")
        return value
    return parse


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML config (default: /etc/edgesched/config.yaml if present, "
                             "else the shipped configs/default.yaml)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgesched", description=(
        "Several DNNs on one Jetson GPU, in one process, with predictable latency."))
    parser.add_argument("--version", action="version", version=f"edgesched {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="serve the configured models until SIGINT/SIGTERM")
    _config_arg(serve)
    serve.add_argument("--endpoint", type=_endpoint, help="override server.endpoint")
    serve.add_argument("--metrics", type=_metrics, metavar="HOST:PORT",
                       help="serve Prometheus /metrics there (overrides server.metrics; a "
                            "bare PORT is loopback)")
    serve.add_argument("--force-profile", action="store_true",
                       help="use the profile even if measured on another device/power mode")

    status = sub.add_parser("status", help="show a running server's models and statistics")
    status.add_argument("--endpoint", type=_endpoint, default=None,
                        help=f"server endpoint (default {default_endpoint()})")
    status.add_argument("--timeout", type=_positive(float), default=3.0, metavar="S")
    status.add_argument("--server-key", type=Path, default=None, metavar="FILE.key",
                        help="CURVE: the server's public certificate")
    status.add_argument("--client-key", type=Path, default=None, metavar="FILE.key_secret",
                        help="CURVE: this client's secret certificate")

    top = sub.add_parser("top", help="live view of a running server (q quits)")
    top.add_argument("--endpoint", type=_endpoint, default=None,
                     help=f"server endpoint (default {default_endpoint()})")
    top.add_argument("--interval", type=_positive(float), default=1.0, metavar="S",
                     help="seconds between refreshes (default 1)")
    top.add_argument("--count", type=_positive(int), default=None, metavar="N",
                     help="stop after N refreshes (default: until q or Ctrl-C)")
    top.add_argument("--timeout", type=_positive(float), default=3.0, metavar="S")
    top.add_argument("--server-key", type=Path, default=None, metavar="FILE.key")
    top.add_argument("--client-key", type=Path, default=None, metavar="FILE.key_secret")
    keys = sub.add_parser("keys", help="create a CURVE certificate pair (for tcp beyond "
                                       "loopback)")
    keys.add_argument("directory", type=Path, metavar="DIR")
    keys.add_argument("--name", type=_key_name, default="edgesched",
                      help="file stem: NAME.key (public) and NAME.key_secret")

    demo = sub.add_parser("demo", help="serve the example models under a mixed workload")
    demo.add_argument("--seconds", type=_positive(float), default=10.0)
    demo.add_argument("--policy", choices=sorted(POLICIES), default=None)

    build = sub.add_parser("build", help="cut an ONNX model into slices (+ TensorRT engines)")
    build.add_argument("model", type=Path, help="the .onnx file")
    build.add_argument("--slices", type=_int_range(1, 64), required=True, metavar="N")
    build.add_argument("--out", type=Path, required=True, metavar="DIR")
    build.add_argument("--name", default=None, help="model name (default: the file's stem)")
    build.add_argument("--shape", type=_shape, action="append", default=[],
                       metavar="NAME:DIMS", help="an input's shape, NAME:1x3x640x640 (a static "
                       "engine), or a range NAME:MIN/OPT/MAX (1x3x320x320/1x3x640x640/"
                       "1x3x1280x1280); repeat per input; needed for every dynamic input")
    build.add_argument("--instances", type=_int_range(1, 64), default=1, metavar="N",
                       help="TensorRT optimization profiles per engine for ranged inputs: one "
                       "per instance served at once (default 1)")
    build.add_argument("--fp16", action="store_true", help="TensorRT FP16 engines (TensorRT 11: "
                       "the model must already be FP16)")
    build.add_argument("--int8", action="store_true", help="TensorRT INT8 engines: a model with "
                       "Q/DQ nodes as it is, else calibrated with --calibration-data")
    build.add_argument("--calibration-data", type=Path, default=None, metavar="DIR",
                       help="INT8 calibration samples: DIR/NAME.npy per model input, the "
                       "samples concatenated along the first axis ((N, 3, 640, 640) is N "
                       "samples of a 1x3x640x640 input); the cache goes to OUT/calibration/")
    build.add_argument("--dla", type=_int_range(0, 7), default=None, metavar="CORE",
                       help="build for a DLA core, GPU fallback on (needs --fp16 or --int8)")
    build.add_argument("--measured", type=Path, default=None, metavar="PROFILE",
                       help="cut on the per-node times a TensorRT calibration measured "
                            "(the profile's node_us) instead of cost-model estimates")

    sim = sub.add_parser("simulate", help="run a workload under each policy on a simulated "
                                          "Jetson GPU")
    sim.add_argument("--workload", type=Path, required=True, metavar="W.yaml")
    sim.add_argument("--device", default=None, help="override the workload's device")
    sim.add_argument("--policy", action="append", choices=sorted(POLICIES), default=None,
                     help="a policy to run (repeat; default: all)")
    sim.add_argument("--duration", type=_positive(float), default=None, metavar="S",
                     help="override the workload's duration_s")
    sim.add_argument("--json", action="store_true", help="print one JSON object")

    cal = sub.add_parser("calibrate", help="measure every slice's demand on this device")
    _config_arg(cal)
    cal.add_argument("--out", type=Path, default=None, metavar="PROFILE",
                     help="profile file (default: the config's `profile`, else ./profile.json)")
    cal.add_argument("--runs", type=_int_range(1, 1000), default=5,
                     help="solo runs per slice (the median is kept)")
    cal.add_argument("--pairs", type=_int_range(0, 10000), default=40,
                     help="slice pairs co-run to fit the predictor")
    cal.add_argument("--seed", type=_int_range(0, 2**31), default=0)

    pre = sub.add_parser("predict", help="predict whether models fit together, from a profile")
    pre.add_argument("--profile", type=Path, required=True)
    pre.add_argument("models", nargs="+", metavar="MODEL[:RATE[:SLO]]",
                     help="RATE in requests/s (omitted: as fast as served); SLO in ms "
                          "(omitted: the config's, else best effort)")
    _config_arg(pre)
    pre.add_argument("--policy", choices=sorted(POLICIES), default=None,
                     help="default: the config's scheduler.policy")
    pre.add_argument("--duration", type=_positive(float), default=30.0, metavar="S")
    pre.add_argument("--json", action="store_true")

    selftest = sub.add_parser("selftest", help="check TensorRT, CUDA and telemetry on this "
                                               "machine")
    selftest.add_argument("--cuda", action="store_true",
                          help="instead: the CUDA harness (cuda-python + NVRTC, no TensorRT): "
                               "context, streams, events, zero-copy, probe kernels solo, "
                               "co-run and by stream priority")
    selftest.add_argument("--json", type=Path, default=None, metavar="PATH",
                          help="with --cuda: write the harness's report as JSON")

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    overhead = bench_sub.add_parser("overhead", help="server round trip vs in-process vs raw "
                                                     "ZeroMQ echo")
    _config_arg(overhead)
    overhead.add_argument("--model", default="attention")
    overhead.add_argument("--requests", type=_positive(int), default=2000)
    scheduler = bench_sub.add_parser("scheduler", help="microseconds per plan at 8 to 512 "
                                                       "waiting requests, per policy")
    scheduler.add_argument("--repeats", type=_positive(int), default=2000)
    frames = bench_sub.add_parser("frames", help="camera frames by copy and by shared memory "
                                                 "vs raw ZeroMQ echo")
    frames.add_argument("--requests", type=_positive(int), default=200)
    soak = bench_sub.add_parser("soak", help="long mixed load; watch the server for leaks and "
                                             "lost requests")
    _config_arg(soak)
    soak.add_argument("--endpoint", type=_endpoint, default=None,
                      help="attach to the server running there (default: start one on a "
                           "private socket and stop it at the end)")
    soak.add_argument("--minutes", type=_positive(float), default=10.0)
    soak.add_argument("--interval-s", type=_positive(float), default=60.0,
                      help="seconds per printed row")
    soak.add_argument("--clients", type=_int_range(1, 64), default=4,
                      help="pipelining client threads")
    soak.add_argument("--json", action="store_true",
                      help="print the result as one JSON object (rows go to stderr)")
    add_models_parser(sub)
    return parser


def _serve(args) -> int:
    from edgesched.serve.server import Server
    from edgesched.serve.systemd import Notifier
    config = load_config(args.config or default_config())
    # Under systemd (Type=notify) `systemctl status` shows these STATUS= lines; the Server
    # sends READY=1, WATCHDOG=1 and STOPPING=1 itself. Outside systemd all of it is a no-op.
    with Notifier.from_env() as notifier:
        notifier.status(f"loading {len(config.models)} models")
        server = Server(config, endpoint=args.endpoint, force_profile=args.force_profile,
                        notifier=notifier, metrics=args.metrics).start()
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        # SIGHUP (systemctl reload): re-read the config file (serve/reload.py), not exit.
        signal.signal(signal.SIGHUP, lambda *_: server.reloader.request())
        serving = (f"serving {', '.join(server.models)} on {server.endpoint} "
                   f"({server.backend.name}, policy {config.scheduler.policy.value})")
        notifier.status(serving)
        print(f"edgesched: {serving}", flush=True)
        if server.metrics is not None:
            print(f"edgesched: metrics on {server.metrics.url}", flush=True)
        # Handlers run on the main thread, which a signal given to another thread never wakes.
        while not stop.wait(0.25):
            pass
        notifier.status("draining in-flight requests")
        print("edgesched: draining", flush=True)
        server.stop()
    return 0


def _status(args) -> int:
    from edgesched.serve.client import Client
    with Client(args.endpoint, timeout_s=args.timeout, server_key=args.server_key,
                client_key=args.client_key) as client:
        models, stats = client.models(), client.stats()
    print(f"{client.endpoint}: backend {stats['backend']}, policy {stats['policy']}, "
          f"{stats['streams']} streams, up {stats['uptime_s']:.0f} s")
    print(format_table(["model", "priority", "slo_ms", "slices", "inputs"], [
        [m["name"], m["priority"], m["slo_ms"], m["slices"],
         ", ".join(f"{t['name']}:{t['dtype']}{t['shape']}" for t in m["inputs"])]
        for m in models]))
    print()
    print(format_table(
        ["model", "completed", "p50_ms", "p99_ms", "slo_met", "queued", "rejected", "expired",
         "failed", "invalid"],
        [[name, s["completed"], s["p50_ms"], s["p99_ms"],
          None if s["slo_attainment"] is None else f"{100 * s['slo_attainment']:.1f}%",
          s["queue_depth"], s["rejected"], s["expired"], s["failed"], s["invalid"]]
         for name, s in stats["models"].items()]))
    drifting = [(name, s["drift"]) for name, s in stats["models"].items()
                if (s.get("drift") or {}).get("drifting")]
    for name, d in drifting:
        print(f"drift: {name} slices run at {d['ratio']:.2f}x the profile's time"
              + (f" (likely cause: {d['cause']})" if d["cause"] else "")
              + "; recalibrate (`edgesched calibrate`)")
    return 0


def _top(args) -> int:
    from edgesched.commands.top import top
    from edgesched.serve.client import Client
    with Client(args.endpoint, timeout_s=args.timeout, server_key=args.server_key,
                client_key=args.client_key) as client:
        return top(client, args.interval, args.count, sys.stdout.isatty(),
                   lambda text: print(text, end="", flush=True))


def _demo(args) -> int:
    from edgesched.commands.demo import run_demo
    print(run_demo(args.seconds, args.policy), flush=True)
    return 0


def _bench(args) -> int:
    if args.bench == "soak":
        return _bench_soak(args)
    if args.bench == "frames":
        from edgesched.commands.bench_frames import bench_frames
        print(bench_frames(n=args.requests), flush=True)
        return 0
    if args.bench == "scheduler":
        from edgesched.commands.bench_scheduler import bench_scheduler
        print(bench_scheduler(repeats=args.repeats), flush=True)
        return 0
    from edgesched.commands.bench import bench_overhead
    config = load_config(args.config or default_config())
    print(bench_overhead(config, args.model, n=args.requests), flush=True)
    return 0


def _bench_soak(args) -> int:
    import json

    from edgesched.commands.soak import soak
    out = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else \
        (lambda line: print(line, flush=True))
    result = soak(args.config, args.endpoint, duration_s=args.minutes * 60,
                  interval_s=args.interval_s, clients=args.clients, out=out)
    if args.json:
        print(json.dumps(result.to_dict()), flush=True)
    return 0 if result.clean else 1     # lost or duplicate replies, a crash, a bad server exit


def _shape(text: str):
    from edgesched.shapes import ShapeError, parse_text
    try:
        return parse_text(text)
    except ShapeError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _build(args) -> int:
    from edgesched.backends.tensorrt import BuildOptions
    from edgesched.commands.build import build
    shapes = {}
    for name, shape in args.shape:
        if name in shapes:
            raise ConfigError("build", "--shape", f"one shape per input; {name!r} has two")
        shapes[name] = shape
    options = BuildOptions(fp16=args.fp16, int8=args.int8, dla_core=args.dla,
                           profiles=args.instances)
    print(build(args.model, args.slices, args.out, args.name, options, shapes=shapes,
                calibration_data=args.calibration_data, measured=args.measured), flush=True)
    return 0


def _simulate(args) -> int:
    import json

    from edgesched.commands.simulate import format_report, simulate
    from edgesched.commands.workload import load_workload, with_device
    workload = load_workload(args.workload)
    if args.device:
        workload = with_device(workload, args.device)
    if args.duration:
        workload = dataclasses.replace(workload, duration_s=args.duration)
    result = simulate(workload, args.policy or ["fifo", "greedy", "priority", "interference"],
                      processes=os.cpu_count() or 1)
    print(json.dumps(result) if args.json else format_report(result), flush=True)
    return 0


def _calibrate(args) -> int:
    from edgesched.commands.calibrate import calibrate, plot, report
    from edgesched.commands.progress import Progress
    config = load_config(args.config or default_config())
    out = args.out or config.profile or Path("profile.json")
    bar = Progress(len(config.models), "calibrating")
    profile = calibrate(config, runs=args.runs, pairs=args.pairs, seed=args.seed,
                        progress=bar.step)
    profile.save(out)
    print(report(profile))
    png = out.with_suffix(".png")
    print(f"wrote {out}" + (f" and {png}" if plot(profile, png) else
                            " (install edgesched[plot] for a PNG report)"), flush=True)
    return 0


def _predict(args) -> int:
    import json

    from edgesched.commands.predict import check_shapes, format_prediction, parse_spec, predict
    from edgesched.sched.profile import Profile
    config = load_config(args.config or default_config())
    try:
        profile = Profile.load(args.profile)
    except (OSError, ValueError) as e:
        raise ConfigError(str(args.profile), "profile", "a profile written by `edgesched "
                          f"calibrate` ({str(e).splitlines()[0]})") from None
    defaults = {m.name: (m.slo_ms, m.priority) for m in config.models}
    specs = [parse_spec(text, profile, defaults) for text in args.models]
    check_shapes(profile, config, [s.name for s in specs], str(args.profile))
    result = predict(profile, specs, args.policy or config.scheduler.policy.value,
                     duration_s=args.duration)
    print(json.dumps(result) if args.json else format_prediction(result), flush=True)
    return 0


def _key_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value):
        raise argparse.ArgumentTypeError(f"expected a file stem of letters, digits, _ . -, got "
                                         f"{value!r}")
    return value


def _keys(args) -> int:
    from edgesched.serve.access import create_keys
    for path in (args.directory / f"{args.name}.key", args.directory / f"{args.name}.key_secret"):
        if path.exists():
            raise ConfigError("keys", "--name", "a name not used in the directory yet",
                              str(path))
    try:
        public, secret = create_keys(args.directory, args.name)
    except OSError as e:
        raise ConfigError("keys", "DIR", "a directory this user can write", str(e)) from None
    print(f"wrote {public} (public: hand it out) and {secret} (secret: keep it private)")
    return 0


def _selftest(args) -> int:
    if args.cuda:
        from edgesched.commands.cuda_check import cuda_check
        return cuda_check(args.json, lambda line: print(line, flush=True))
    if args.json is not None:
        raise ConfigError("selftest", "--json", "--cuda with it (only the CUDA harness "
                          "writes JSON)")
    from edgesched.commands.selftest import selftest
    return selftest(lambda line: print(line, flush=True))


COMMANDS = {"selftest": _selftest, "calibrate": _calibrate, "predict": _predict, "simulate": _simulate, "serve": _serve, "status": _status, "top": _top, "demo": _demo, "bench": _bench, "build": _build, "keys": _keys, "models": run_models}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return COMMANDS[args.command](args)
    except EdgeschedError as e:
        print(f"edgesched: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except FileNotFoundError as e:
        print(f"edgesched: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
