"""`edgesched models list|load|unload`: the model set of a running server."""
from __future__ import annotations

import json
from pathlib import Path

HELP = """\
list shows what is served (everyone may). load and unload are for admins only: root, the
server's own user, members of server.admin_group (over the ipc socket), or CURVE clients
whose key is in server.admin_keys; anyone else gets NotPermitted. A load is loaded and
warmed beside the served models and switched in atomically; a model of the same name is
replaced. An unload stops new requests at once (UnknownModel), answers those in flight, then
unloads. These changes are a runtime overlay on the config file: they survive `systemctl
reload` (SIGHUP) until the file's own entry for that name is edited, and a restart serves
the file alone. A PATH that is a directory of numbered versions serves the highest, or
--version N."""


def add_parser(sub) -> None:
    models = sub.add_parser("models", help="list, load or unload a running server's models",
                            description=HELP)
    verbs = models.add_subparsers(dest="verb", required=True, metavar="VERB")
    listing = verbs.add_parser("list", help="the models served: version, origin, health")
    listing.add_argument("--json", action="store_true", help="print one JSON list")
    load = verbs.add_parser("load", help="load and serve a model (admins)", description=HELP)
    load.add_argument("name")
    load.add_argument("path", type=Path, help="a .onnx/.engine/.plan file, a sliced directory, "
                      "or a directory of numbered versions (relative: to this directory)")
    load.add_argument("--slo-ms", type=float, required=True, metavar="MS")
    load.add_argument("--priority", choices=("realtime", "best_effort"), default=None)
    load.add_argument("--instances", type=int, default=None, metavar="N")
    load.add_argument("--version", type=int, default=None, metavar="N",
                      help="pin a numbered version (default: the highest)")
    load.add_argument("--shape", action="append", default=[], metavar="NAME:DIMS",
                      help="an input's shape or MIN/OPT/MAX range, as `edgesched build`")
    unload = verbs.add_parser("unload", help="stop serving a model and unload it (admins)")
    unload.add_argument("name")
    for verb in (listing, load, unload):
        verb.add_argument("--endpoint", default=None, help="server endpoint")
        verb.add_argument("--timeout", type=_seconds, default=None, metavar="S",
                          help="seconds to wait for the reply (default: 3 for list, 300 else)")
        verb.add_argument("--server-key", type=Path, default=None, metavar="FILE.key")
        verb.add_argument("--client-key", type=Path, default=None, metavar="FILE.key_secret")


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise ValueError(text)          # argparse: "invalid _seconds value" -> one line
    return value


_seconds.__name__ = "positive float"      # what argparse names in its one-line error


def entry_of(args) -> dict:
    """The config-file model entry a `models load` names (the server checks its values)."""
    from edgesched.errors import ConfigError
    from edgesched.shapes import ShapeError, parse_text
    entry: dict = {"name": args.name, "path": str(args.path), "slo_ms": args.slo_ms}
    for key in ("priority", "instances", "version"):
        if getattr(args, key) is not None:
            entry[key] = getattr(args, key)
    shapes = {}
    for text in args.shape:
        try:
            name, shape = parse_text(text)
        except ShapeError as e:
            raise ConfigError("models load", "--shape", "NAME:DIMS or NAME:MIN/OPT/MAX",
                              str(e)) from None
        shapes[name] = shape.to_json()
    if shapes:
        entry["shapes"] = shapes
    return entry


def run(args, out=print) -> int:
    from edgesched.commands.table import format_table
    from edgesched.config import validate_endpoint
    from edgesched.serve.admin import LOAD_TIMEOUT_S, load_model, unload_model
    from edgesched.serve.client import Client
    endpoint = None if args.endpoint is None else validate_endpoint(args.endpoint, "--endpoint",
                                                                    "endpoint")
    timeout_s = args.timeout or (3.0 if args.verb == "list" else LOAD_TIMEOUT_S)
    with Client(endpoint, timeout_s=timeout_s, server_key=args.server_key,
                client_key=args.client_key) as client:
        if args.verb == "list":
            models = client.models()
            if args.json:
                out(json.dumps(models))
                return 0
            out(format_table(["model", "version", "origin", "priority", "slo_ms", "slices",
                              "healthy", "path"],
                             [[m["name"], m.get("version"), m.get("origin"), m["priority"],
                               m["slo_ms"], m["slices"], "yes" if m.get("healthy") else "NO",
                               m.get("path")] for m in models]))
        elif args.verb == "load":
            reply = load_model(client, entry_of(args), timeout_s)
            version = "" if reply.get("version") is None else f" version {reply['version']}"
            out(f"loaded {reply['model']}{version}: {reply['change']}")
        else:
            reply = unload_model(client, args.name, timeout_s)
            out(f"unloaded {reply['model']}" + ("" if reply["drained"] else
                " (still draining: its requests outlived the server's drain timeout)"))
    return 0


__all__ = ["add_parser", "entry_of", "run"]
