"""`edgesched selftest --cuda`: the CUDA harness (cuda-python + NVRTC only), printed and saved.

One line per check as it completes ("ok  " / "FAIL"), then three tables: solo probe times,
the co-run slowdown matrix, and the stream-priority comparison. --json writes the whole
report (backends/tensorrt/harness/result.py). Without cuda-python, a driver or a GPU the
harness raises BackendUnavailable before any check: the CLI prints that one line.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from edgesched.commands.table import format_table
from edgesched.errors import ConfigError


def _line(check) -> str:
    return f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}"


def cuda_check(json_path: Path | None = None, print_line: Callable[[str], None] = print, *,
               settings=None, driver=None, nvrtc=None) -> int:
    """Run the harness; 0 when every check passed, 1 otherwise (the report is still written)."""
    from edgesched.backends.tensorrt.harness import Settings, run
    if json_path is not None and not json_path.parent.is_dir():
        raise ConfigError("selftest", "--json", "a file in an existing directory",
                          str(json_path))
    report = run(settings or Settings(), driver=driver, nvrtc=nvrtc,
                 on_check=lambda check: print_line(_line(check)))
    for text in (solo_table(report), corun_table(report), priority_table(report)):
        if text:
            print_line("")
            print_line(text)
    if json_path is not None:
        json_path.write_text(json.dumps(report.to_dict(), indent=1) + "\n")
        print_line(f"\nwrote {json_path}")
    return 0 if report.ok else 1


def solo_table(report) -> str:
    if not report.solo:
        return ""
    return "solo probe times (device time between timing events; median of runs)\n" + \
        format_table(["probe", "grid", "sm_fraction", "median_ms", "min_ms", "rate"],
                     [[r.probe, r.grid, r.sm_fraction, r.median_ms, r.min_ms,
                       f"{r.rate:.1f} {r.rate_unit}"] for r in report.solo])


def _size(kind: str, fraction: float) -> str:
    return f"{kind}@{fraction:g}"


def corun_table(report) -> str:
    """Rows: the timed probe (victim) and its SM fraction; columns: the load beside it."""
    if not report.corun:
        return ""
    columns = list(dict.fromkeys(_size(c.load, c.load_sm_fraction) for c in report.corun))
    rows: dict[str, dict[str, str]] = {}
    for c in report.corun:
        cells = rows.setdefault(_size(c.victim, c.victim_sm_fraction), {})
        cells[_size(c.load, c.load_sm_fraction)] = f"{c.slowdown:.2f}x" + \
            ("" if c.covered else "*")
    return ("co-run slowdown of the row's probe beside the column's load (two streams, equal "
            "priority; * = outlasted its load: a lower bound)\n" + format_table(
                ["victim \\ load", *columns],
                [[name, *[cells.get(col) for col in columns]] for name, cells in rows.items()]))


def priority_table(report) -> str:
    if not report.priority:
        return ""
    return ("a probe on the high- vs a low-priority stream beside a low-priority compute load "
            "of many waves\n" + format_table(
                ["victim", "grid", "load_grid", "solo_ms", "high_ms", "low_ms", "high_x",
                 "low_x", "keeps_solo_time"],
                [[r.victim, r.grid, r.load_grid, r.solo_ms, r.high_ms, r.low_ms,
                  r.high_slowdown, r.low_slowdown, "yes" if r.keeps_solo_time else "no"]
                 for r in report.priority]))
