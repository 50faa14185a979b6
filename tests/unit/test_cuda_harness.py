"""`edgesched selftest --cuda` end to end against the fake driver and NVRTC
(tests/fakes_cuda_probes), and its one-line refusals where there is no GPU or no cuda-python."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgesched.backends.tensorrt import harness
from edgesched.backends.tensorrt.harness import driver as harness_driver
from edgesched.backends.tensorrt.probes import nvrtc as probe_nvrtc
from edgesched.commands import cli
from edgesched.commands.cuda_check import cuda_check
from edgesched.errors import BackendUnavailable
from tests import fakes_cuda_probes as fakes
from tests.imported import loaded_by

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ["device", "primary context", "priority streams", "nvrtc", "modules", "timing events",
          "blocking-sync event", "zero-copy", "solo", "co-runs", "stream priority", "cleanup"]


@pytest.fixture
def fake():
    return fakes.make()


def run(fake, **settings) -> harness.Report:
    return harness.run(harness.Settings(**settings), driver=fake.driver, nvrtc=fake.nvrtc)


def test_every_check_passes_and_nothing_is_broken_or_left_behind(fake):
    report = run(fake)
    assert [c.name for c in report.checks] == CHECKS
    assert report.ok, [c for c in report.checks if not c.ok]
    assert fake.violations == [] and fake.leftovers() == []


def test_the_report_has_every_measurement_and_is_json(fake):
    s = harness.Settings()
    data = json.loads(json.dumps(run(fake).to_dict()))
    assert data["schema"] == 1 and data["ok"] is True
    assert data["device"]["compute_capability"] == "8.7" and data["device"]["sms"] == 16
    assert {p["kind"]: p["image"] for p in data["probes"]} == {"compute": "cubin",
                                                               "memory": "cubin"}
    assert len(data["solo"]) == 2 * len(s.solo_fractions)
    assert len(data["corun"]) == (2 * len(s.corun_fractions)) ** 2
    assert {(c["victim"], c["load"]) for c in data["corun"]} == {
        ("compute", "compute"), ("compute", "memory"), ("memory", "compute"),
        ("memory", "memory")}
    assert [r["victim"] for r in data["priority"]] == ["compute", "memory"]
    assert data["sm_clock_mhz"] == pytest.approx(1300, rel=0.01)


def test_probes_are_tuned_to_the_target_time_at_one_full_wave(fake):
    report = run(fake, target_ms=3.0)
    full = {r.probe: r.median_ms for r in report.solo if r.sm_fraction == 1.0}
    assert full == {"compute": pytest.approx(3.0, rel=0.02),
                    "memory": pytest.approx(3.0, rel=0.02)}


def test_grids_follow_the_occupancy_and_the_sm_fraction(fake):
    report = run(fake)
    per_sm = {p.kind: p.blocks_per_sm for p in report.probes}
    assert per_sm == {"compute": 6, "memory": 6}        # 1536 threads per SM / 256
    rows = {(r.probe, r.sm_fraction): r.grid for r in report.solo}
    assert rows[("compute", 0.25)] == 24 and rows[("memory", 2.0)] == 192


def test_the_matrix_times_the_victim_beside_the_load_not_the_other_way_round(fake):
    cells = {(c.victim, c.load, c.victim_sm_fraction, c.load_sm_fraction): c
             for c in run(fake).corun}
    # the fake's contention: like beside like slows most; a bigger load slows more
    assert cells[("compute", "compute", 0.25, 0.5)].slowdown > \
        cells[("compute", "memory", 0.25, 0.5)].slowdown > 1
    assert cells[("memory", "memory", 0.25, 0.5)].slowdown > \
        cells[("memory", "compute", 0.25, 0.5)].slowdown
    assert cells[("compute", "compute", 0.25, 0.75)].slowdown > \
        cells[("compute", "compute", 0.25, 0.25)].slowdown
    assert all(c.covered for c in cells.values())


def test_the_priority_check_runs_the_victim_on_the_high_priority_stream(fake):
    for row in run(fake).priority:
        assert row.high_slowdown < row.low_slowdown
        assert row.low_slowdown > 4                    # it waited for the whole load
        assert row.load_grid > 2 * 96                  # many waves of the compute load


def test_a_victim_that_keeps_its_time_is_reported_so(fake):
    fake.gpu.weights = dict.fromkeys(fake.gpu.weights, 0.0)    # no sharing costs at all
    fake.gpu.oversubscription = 0.0
    rows = run(fake, target_ms=4.0).priority      # the wait for one load block: 0.2 ms of 1.3
    assert all(r.keeps_solo_time for r in rows)
    assert not any(r.keeps_solo_time for r in run(fakes.make()).priority)


def test_without_nvrtc_the_device_checks_still_run_and_the_probes_are_skipped(fake):
    class Missing:
        def nvrtcVersion(self):
            raise RuntimeError("Failed to dlopen libnvrtc.so.12")
    report = harness.run(driver=fake.driver, nvrtc=Missing())
    names = {c.name: c for c in report.checks}
    assert names["priority streams"].ok and not names["nvrtc"].ok
    assert "edgesched[nvrtc]" in names["nvrtc"].detail and "no probe" in names["nvrtc"].detail
    assert "solo" not in names and names["cleanup"].ok and not report.ok
    assert fake.leftovers() == []


def test_a_device_without_stream_priorities_fails_that_check(fake):
    fake.gpu.spec.priority_range = (0, 0)
    report = run(fake)
    check = next(c for c in report.checks if c.name == "priority streams")
    assert not check.ok and "no stream priorities" in check.detail
    assert not report.ok


def test_ptx_is_loaded_where_a_cubin_is_not_wanted(fake):
    report = run(fake, prefer_cubin=False)
    assert {p.image for p in report.probes} == {"ptx"} and report.ok


def test_an_older_gpu_gets_probes_for_its_own_architecture():
    fake = fakes.make(fakes.Spec(name="Fake Xavier", cc=(7, 2), sms=8))
    report = run(fake)
    assert report.ok and {p.arch for p in report.probes} == {"sm_72"}


# --- the command ----------------------------------------------------------------------------

def _use(monkeypatch, fake) -> None:
    monkeypatch.setattr(harness_driver, "import_driver", lambda: fake.driver)
    monkeypatch.setattr(probe_nvrtc, "import_nvrtc", lambda: fake.nvrtc)


def test_the_command_prints_the_checks_and_tables_and_writes_json(monkeypatch, fake, tmp_path,
                                                                  capsys):
    _use(monkeypatch, fake)
    out = tmp_path / "cuda.json"
    assert cli.main(["selftest", "--cuda", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in CHECKS:
        assert f"ok   {name}: " in printed
    assert "victim \\ load" in printed and "compute@0.25" in printed and "keeps_solo_time" in \
        printed
    assert json.loads(out.read_text())["ok"] is True
    assert fake.violations == [] and fake.leftovers() == []


def test_a_failed_check_exits_one_and_still_writes_the_report(monkeypatch, fake, tmp_path):
    fake.gpu.spec.priority_range = (0, 0)
    _use(monkeypatch, fake)
    out = tmp_path / "cuda.json"
    assert cuda_check(out, lambda line: None) == 1
    assert json.loads(out.read_text())["ok"] is False


@pytest.mark.parametrize("case, message", [
    ("no device", "no CUDA device (cuInit: CUDA_ERROR_NO_DEVICE)"),
    ("no driver", "no NVIDIA driver: libcuda.so.1 does not load (Failed to dlopen libcuda.so.1)"),
])
def test_without_a_gpu_it_stops_with_one_line_before_any_check(monkeypatch, capsys, case,
                                                                message):
    fake = fakes.make(fakes.Spec(devices=0 if case == "no device" else 1),
                      no_driver=case == "no driver")
    _use(monkeypatch, fake)
    assert cli.main(["selftest", "--cuda"]) == cli.EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"edgesched: error: {message}\n"


def test_a_primary_context_that_cannot_be_had_stops_with_one_line_and_leaves_nothing(
        monkeypatch, fake, capsys):
    monkeypatch.setattr(fake.driver, "cuCtxPushCurrent",
                        lambda ctx: (fake.driver.CUresult(201),))
    _use(monkeypatch, fake)
    assert cli.main(["selftest", "--cuda"]) == cli.EXIT_USAGE
    assert capsys.readouterr().err == ("edgesched: error: the GPU's primary context is "
                                       "unavailable (cuCtxPushCurrent failed: "
                                       "CUDA_ERROR_INVALID_CONTEXT)\n")
    assert fake.leftovers() == []                      # the retain was released


def test_without_cuda_python_it_stops_with_one_line(monkeypatch, capsys):
    def missing():
        raise BackendUnavailable("cuda-python is not installed: pip install 'edgesched[nvrtc]'")
    monkeypatch.setattr(harness_driver, "import_driver", missing)
    assert cli.main(["selftest", "--cuda"]) == cli.EXIT_USAGE
    assert capsys.readouterr().err.count("\n") == 1


def test_json_needs_cuda_and_an_existing_directory(tmp_path, capsys):
    assert cli.main(["selftest", "--json", str(tmp_path / "x.json")]) == cli.EXIT_USAGE
    assert cli.main(["selftest", "--cuda", "--json", str(tmp_path / "no" / "x.json")]) == \
        cli.EXIT_USAGE
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "--cuda" in err[0] and "existing directory" in err[1]


def test_on_this_machine_the_real_command_refuses_in_one_line_or_runs():
    done = subprocess.run([sys.executable, "-m", "edgesched", "selftest", "--cuda"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    if done.returncode in (0, 1) and "ok   device:" in done.stdout:   # a machine with a GPU
        return
    assert done.returncode == cli.EXIT_USAGE, done.stderr
    assert done.stdout == "" and done.stderr.count("\n") == 1
    assert done.stderr.startswith("edgesched: error: ") and "Traceback" not in done.stderr


def test_importing_the_harness_imports_no_cuda_binding():
    loaded = loaded_by("import edgesched.commands.cuda_check, edgesched.backends.tensorrt.harness"
                       "\nimport edgesched.backends.tensorrt.probes.nvrtc")
    assert not {"cuda", "pycuda", "tensorrt"} & loaded
