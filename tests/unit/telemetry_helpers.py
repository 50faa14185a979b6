"""Paths to the telemetry fixture trees (tests/fixtures/), shared by test_telemetry_*.py."""
from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SYSFS = FIXTURES / "sysfs"
TEGRASTATS = FIXTURES / "tegrastats"
