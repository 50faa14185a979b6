"""systemd integration: the sd_notify protocol spoken by hand, the unit and its companions.

The notifier is tested against datagram sockets the tests bind themselves, standing in for
systemd's $NOTIFY_SOCKET. Socket files live in short directories under /tmp
(`tempfile.mkdtemp`): pytest's tmp_path can pass the 107-byte unix socket path limit.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from edgesched.config import ServerConfig
from edgesched.serve.systemd import Notifier
from tests.notify_socket import notifier_for, pending, received

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "edgesched.service"
SYSUSERS = ROOT / "systemd" / "edgesched.sysusers.conf"
TMPFILES = ROOT / "systemd" / "edgesched.tmpfiles.conf"
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="abstract unix sockets are Linux-only")


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


# --- the messages -----------------------------------------------------------------------------
def test_each_state_is_one_datagram_with_the_exact_assignment(listener):
    sock, address = listener
    with notifier_for(address, WATCHDOG_USEC="10000000") as notifier:
        assert notifier.enabled and notifier.watchdog_enabled
        notifier.status("loading 3 models")
        notifier.ready()
        notifier.watchdog()
        notifier.stopping()
    assert received(sock) == ["STATUS=loading 3 models", "READY=1", "WATCHDOG=1", "STOPPING=1"]


def test_a_status_stays_one_line(listener):
    sock, address = listener
    with notifier_for(address) as notifier:
        notifier.status("first line\nsecond line")
    assert received(sock) == ["STATUS=first line second line"]


@linux_only
def test_an_abstract_namespace_socket_is_addressed_with_a_leading_nul():
    name = f"edgesched-test-{os.getpid()}-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind("\0" + name)
        with notifier_for("@" + name, WATCHDOG_USEC="1000000") as notifier:
            notifier.ready()
            notifier.watchdog()
            notifier.stopping()
        assert received(sock) == ["READY=1", "WATCHDOG=1", "STOPPING=1"]
    finally:
        sock.close()


# --- the watchdog -----------------------------------------------------------------------------
def test_watchdog_pings_at_most_once_per_half_interval(listener):
    sock, address = listener
    clock = FakeClock()
    with notifier_for(address, clock, WATCHDOG_USEC="1000000") as notifier:   # 1 s
        assert notifier.watchdog_interval_s == 0.5
        notifier.ready()
        assert pending(sock) == ["READY=1"]
        sent_at_s = []
        for step_ms in range(0, 2000, 50):          # an engine loop turning every 50 ms for 2 s
            clock.now_s = 100.0 + step_ms / 1e3
            notifier.watchdog()
            notifier.watchdog()                     # twice in the same instant: still one ping
            messages = pending(sock)
            assert messages in ([], ["WATCHDOG=1"])
            if messages:
                sent_at_s.append(step_ms / 1e3)
    assert sent_at_s == [0.0, 0.5, 1.0, 1.5]


def test_watchdog_waits_for_ready(listener):
    """systemd arms the watchdog when start-up completes: pings before READY=1 prove nothing."""
    sock, address = listener
    with notifier_for(address, WATCHDOG_USEC="1000000") as notifier:
        notifier.watchdog()
        notifier.ready()
        notifier.watchdog()
    assert received(sock) == ["READY=1", "WATCHDOG=1"]


def test_no_watchdog_usec_means_no_pings(listener):
    sock, address = listener
    with notifier_for(address) as notifier:
        assert notifier.enabled and not notifier.watchdog_enabled
        notifier.ready()
        notifier.watchdog()
    assert received(sock) == ["READY=1"]


def test_watchdog_pid_of_another_process_means_no_pings(listener):
    sock, address = listener
    with notifier_for(address, WATCHDOG_USEC="1000000",
                      WATCHDOG_PID=str(os.getpid() + 1)) as other:
        assert not other.watchdog_enabled
        other.ready()
        other.watchdog()
    with notifier_for(address, WATCHDOG_USEC="1000000", WATCHDOG_PID=str(os.getpid())) as ours:
        assert ours.watchdog_enabled
        ours.ready()
        ours.watchdog()
    assert received(sock) == ["READY=1", "READY=1", "WATCHDOG=1"]


@pytest.mark.parametrize("usec", ["0", "-5", "ten", "1.5e6"])
def test_a_bad_watchdog_usec_turns_pings_off(listener, usec, caplog):
    sock, address = listener
    with caplog.at_level(logging.WARNING, logger="edgesched.systemd"):
        notifier = notifier_for(address, WATCHDOG_USEC=usec)
    assert not notifier.watchdog_enabled
    assert any("WATCHDOG_USEC" in r.getMessage() for r in caplog.records)


def test_a_full_notify_queue_never_blocks_the_watchdog(listener):
    """Nobody reads the socket (systemd busy): pings are dropped, the engine loop goes on."""
    sock, address = listener
    clock = FakeClock()
    done = threading.Event()

    def engine_loop(notifier: Notifier) -> None:
        for _ in range(1000):                       # far beyond any socket queue's length
            clock.now_s += 1.0
            notifier.watchdog()
        done.set()

    with notifier_for(address, clock, WATCHDOG_USEC="1000000") as notifier:
        notifier.ready()
        thread = threading.Thread(target=engine_loop, args=(notifier,), daemon=True)
        thread.start()
        thread.join(10)
        assert done.is_set(), "watchdog() blocked on a full socket"


# --- no systemd, or a broken one -------------------------------------------------------------
@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}, {"WATCHDOG_USEC": "1000000"}])
def test_without_notify_socket_everything_is_a_no_op(environ):
    notifier = Notifier.from_env(environ)
    assert not notifier.enabled and not notifier.watchdog_enabled
    notifier.status("x")
    notifier.ready()
    notifier.watchdog()
    notifier.stopping()
    assert notifier._sock is None               # not even a file descriptor
    notifier.close()


def test_a_notify_socket_that_is_not_a_unix_path_is_ignored(caplog):
    with caplog.at_level(logging.WARNING, logger="edgesched.systemd"):
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert "NOTIFY_SOCKET" in caplog.text


def test_a_vanished_socket_is_logged_once_and_never_raises(listener, caplog):
    sock, address = listener
    clock = FakeClock()
    with caplog.at_level(logging.WARNING, logger="edgesched.systemd"), \
            notifier_for(address, clock, WATCHDOG_USEC="1000000") as notifier:
        notifier.ready()
        assert received(sock) == ["READY=1"]
        sock.close()                               # systemd went away: refused, then missing
        notifier.status("still here")
        os.unlink(address)
        for _ in range(5):
            clock.now_s += 1.0
            notifier.watchdog()
        notifier.stopping()
    warnings = [r for r in caplog.records if r.name == "edgesched.systemd"]
    assert len(warnings) == 1 and "cannot notify systemd" in warnings[0].getMessage()


def test_a_socket_that_never_existed_does_not_raise(short_dir):
    with notifier_for(str(short_dir / "absent")) as notifier:
        notifier.ready()
        notifier.stopping()


# --- the unit file and its companions ---------------------------------------------------------
def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def seconds(value: str) -> float:
    assert re.fullmatch(r"\d+", value), f"write {value!r} as plain seconds"
    return float(value)


def test_the_unit_is_a_notify_service_with_a_watchdog_and_cuda_safe_hardening():
    s = unit_settings(UNIT.read_text())
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["WatchdogSec"] == ["10"] and s["Restart"] == ["on-failure"]
    assert s["User"] == ["edgesched"] and s["Group"] == ["edgesched"]
    assert set(s["SupplementaryGroups"][0].split()) == {"video", "render", "jtop"}
    assert s["RuntimeDirectory"] == ["edgesched"] and s["RuntimeDirectoryMode"] == ["0750"]
    assert s["ExecStart"] == ["/opt/edgesched/bin/edgesched serve --config "
                              "/etc/edgesched/config.yaml --endpoint "
                              "ipc:///run/edgesched/edgesched.sock"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]   # SIGHUP reloads the config
    assert "PrivateDevices" not in s                # it hides the GPU's device nodes
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                       ("ProtectHome", "yes"), ("PrivateTmp", "yes")]:
        assert s[key] == [value], key
    assert "/var/lib/edgesched" in s["ReadWritePaths"][0].split()
    assert "PYTHONUNBUFFERED=1" in s["Environment"]
    assert "jtop.service" in s["After"][0].split() and s["Wants"] == ["jtop.service"]
    # The server drains for up to drain_timeout_s, then lingers as long again on the last
    # replies: systemd must not SIGKILL it before that.
    assert seconds(s["TimeoutStopSec"][0]) > 2 * ServerConfig().drain_timeout_s
    # The engine loop wakes every 50 ms and pings every WatchdogSec/2.
    assert seconds(s["WatchdogSec"][0]) / 2 > 10 * 0.05


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    """`systemd-analyze verify` on a copy whose ExecStart names an executable that exists here
    (the real one, /opt/edgesched/bin/edgesched, exists only on an installed box)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    text = UNIT.read_text()
    assert "/opt/edgesched/bin/edgesched " in text
    unit = tmp_path / "edgesched.service"
    unit.write_text(text.replace("/opt/edgesched/bin/edgesched ", f"{sys.executable} "))
    done = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True,
                          timeout=60)
    # It warns (on stderr, exit status 0) about settings it cannot parse: none is acceptable.
    # Where the edgesched user or its groups do not exist yet, it may say so: that is fine.
    problems = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()
                and not re.search(r"\b(user|group)\b", line, re.IGNORECASE)]
    assert done.returncode == 0 and problems == [], done.stdout + done.stderr


@pytest.fixture
def tool_root(tmp_path) -> Path:
    """An empty filesystem root with the account databases systemd-sysusers edits."""
    (tmp_path / "etc").mkdir()
    for name in ("passwd", "group", "shadow", "gshadow"):
        (tmp_path / "etc" / name).touch()
    return tmp_path


def test_sysusers_creates_the_user_in_the_device_groups(tool_root):
    tool = shutil.which("systemd-sysusers")
    if tool is None:
        pytest.skip("systemd-sysusers is not installed")
    done = subprocess.run([tool, f"--root={tool_root}", str(SYSUSERS)], capture_output=True,
                          text=True, timeout=60)
    if done.returncode != 0 and os.geteuid() != 0:
        pytest.skip(f"systemd-sysusers needs root here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    users = {line.split(":")[0]: line.split(":") for line in
             (tool_root / "etc/passwd").read_text().splitlines()}
    assert users["edgesched"][5] == "/var/lib/edgesched"
    groups = {line.split(":")[0]: line.split(":")[3].split(",") for line in
              (tool_root / "etc/group").read_text().splitlines()}
    for group in ("video", "render", "jtop"):
        assert "edgesched" in groups[group], group
    assert "edgesched" in groups


def test_tmpfiles_creates_the_state_directory(tool_root):
    sysusers, tmpfiles = shutil.which("systemd-sysusers"), shutil.which("systemd-tmpfiles")
    if sysusers is None or tmpfiles is None:
        pytest.skip("systemd-sysusers / systemd-tmpfiles are not installed")
    if os.geteuid() != 0:
        pytest.skip("creating directories owned by another user needs root")
    subprocess.run([sysusers, f"--root={tool_root}", str(SYSUSERS)], check=True,
                   capture_output=True, timeout=60)
    done = subprocess.run([tmpfiles, f"--root={tool_root}", "--create", str(TMPFILES)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    uid = int(next(line.split(":")[2] for line in
                   (tool_root / "etc/passwd").read_text().splitlines()
                   if line.startswith("edgesched:")))
    for path in ("var/lib/edgesched", "var/lib/edgesched/engines"):
        st = (tool_root / path).stat()
        assert st.st_uid == uid and st.st_mode & 0o777 == 0o750, path
