"""`edgesched selftest` reports what it finds, one line per check, and fails clearly."""
import subprocess
import sys

from edgesched.commands import selftest as st


def test_without_tensorrt_it_stops_at_that_check_with_the_reason(monkeypatch):
    monkeypatch.setattr("edgesched.backends.tensorrt.available", lambda: False)
    lines: list[str] = []
    assert st.selftest(lines.append) == 1
    assert lines[0].startswith("ok   platform:")
    assert lines[-1].startswith("FAIL tensorrt:") and "JetPack" in lines[-1]
    assert len(lines) == 2


def test_an_exception_inside_a_check_becomes_that_check_s_failure(monkeypatch):
    def broken():
        raise RuntimeError("driver went away\nsecond line")
    monkeypatch.setattr(st, "CHECKS", [st._platform, broken])
    lines: list[str] = []
    assert st.selftest(lines.append) == 1
    assert lines[-1] == "FAIL broken: RuntimeError: driver went away"


def test_every_check_passing_exits_zero(monkeypatch):
    monkeypatch.setattr(st, "CHECKS", [st._platform, lambda: st.Check("x", True, "fine")])
    lines: list[str] = []
    assert st.selftest(lines.append) == 0 and lines[-1] == "ok   x: fine"


def test_the_command_exits_nonzero_here_with_one_line_per_check():
    done = subprocess.run([sys.executable, "-m", "edgesched", "selftest"],
                          capture_output=True, text=True, timeout=120)
    if "ok   tensorrt" in done.stdout:      # a machine with TensorRT: device tests cover it
        return
    assert done.returncode == 1
    assert done.stdout.splitlines()[-1].startswith("FAIL tensorrt:")
    assert "Traceback" not in done.stderr
