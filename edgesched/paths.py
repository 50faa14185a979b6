"""Where shipped files are: the repository checkout (editable install) or <prefix>/share/edgesched."""
from __future__ import annotations

import sys
from pathlib import Path

ETC_CONFIG = Path("/etc/edgesched/config.yaml")


def shipped(relative: str) -> Path:
    """A shipped file (e.g. "configs/default.yaml"); raises FileNotFoundError naming both places."""
    candidates = [Path(__file__).resolve().parents[1] / relative,
                  Path(sys.prefix) / "share" / "edgesched" / relative]
    for path in candidates:
        if path.exists():
            return path
    raise FileNotFoundError(f"{relative} is in neither {candidates[0]} nor {candidates[1]}")


def default_config() -> Path:
    """/etc/edgesched/config.yaml on an installed box, else the shipped default config."""
    return ETC_CONFIG if ETC_CONFIG.exists() else shipped("configs/default.yaml")
