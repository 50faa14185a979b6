"""Which board this is, from the device tree, through a root path (tests point it at a fixture
tree under tests/fixtures/devicetree/).

Jetson Linux exposes the board's model string at `proc/device-tree/model` (a link to
`sys/firmware/devicetree/base`, which is read when /proc is not mounted, as in some containers).
Device-tree strings are NUL-terminated; readable without root. A machine without a device
tree (an x86 PC) has neither file. edgesched.devices maps the string to a module.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edgesched.devices import module_for_model

MODEL_FILES = ("proc/device-tree/model", "sys/firmware/devicetree/base/model")
L4T_FILE = "etc/nv_tegra_release"   # first line: "# R36 (release), REVISION: 3.0, GCID: ..."
_L4T = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+(?:\.\d+)*)")
_MAX_MODEL_BYTES = 4096   # a model string is one short line; never read a stray large file


@dataclass(frozen=True)
class Board:
    model: str | None      # the device-tree model string; None: no device tree
    module: str | None     # its module (edgesched.devices.MODULES); None: none we have figures for


def read_model(root: Path = Path("/")) -> str | None:
    """The model string, without its NUL and surrounding space; None when no file is readable
    or the string is empty."""
    for name in MODEL_FILES:
        try:
            with open(Path(root) / name, "rb") as f:
                raw = f.read(_MAX_MODEL_BYTES)
        except OSError:
            continue
        text = raw.split(b"\0", 1)[0].decode("utf-8", errors="replace").strip()
        if text:
            return text
    return None


def read_board(root: Path = Path("/")) -> Board:
    model = read_model(root)
    return Board(model, None if model is None else module_for_model(model))


def read_l4t(root: Path = Path("/")) -> str | None:
    """The Jetson Linux (L4T) release under `root`, e.g. "36.3.0" (JetPack follows from it);
    None without the file (not a Jetson) or when its first line has another form."""
    try:
        with open(Path(root) / L4T_FILE, "rb") as f:
            line = f.read(_MAX_MODEL_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return None
    found = _L4T.search(line)
    return f"{found.group(1)}.{found.group(2)}" if found else None
