"""The harness's sequence: what it checks, in order, and the three measurements.

Checks stop the run only where later steps cannot work without them (no probes: nothing to
launch; a driver error mid-run: the context may be unusable). The context is always closed,
and closing is a check of its own (everything destroyed, the primary context popped and
released once).
"""
from __future__ import annotations

import statistics
from dataclasses import asdict
from typing import Callable

from edgesched.backends.tensorrt.cuda_streams import CudaDriverError
from edgesched.backends.tensorrt.harness.bench import Bench, Loaded, Settings
from edgesched.backends.tensorrt.harness.driver import Cuda, DeviceInfo
from edgesched.backends.tensorrt.harness.result import (
    Check,
    CorunCell,
    PriorityRow,
    ProbeInfo,
    Report,
    SoloRow,
)
from edgesched.backends.tensorrt.probes import BLOCK_THREADS, PROBES
from edgesched.backends.tensorrt.probes.nvrtc import Compiled, Nvrtc, ProbeCompileError
from edgesched.errors import BackendUnavailable

KINDS = ("compute", "memory")
LOW_STREAMS = 2          # co-runs: load and victim at the same (lowest) priority


class _Stop(Exception):
    """A step failed in a way later steps depend on; its check is already in the report."""


def run(settings: Settings = Settings(), *, driver=None, nvrtc=None,
        on_check: Callable[[Check], None] | None = None) -> Report:
    """Check the device and measure the probes. `driver` / `nvrtc`: cuda-python's modules (or
    fakes); imported here when None. Raises BackendUnavailable, before any check, when there is
    no cuda-python, no NVIDIA driver or no device."""
    report = Report(settings=asdict(settings))

    def emit(check: Check) -> None:
        report.checks.append(check)
        if on_check is not None:
            on_check(check)

    cuda = Cuda(driver).open()
    try:
        _run(cuda, report, settings, nvrtc, emit)
    except _Stop:
        pass
    except CudaDriverError as e:
        emit(Check("driver call", False, str(e)))
    finally:
        failed = cuda.close()
        emit(Check("cleanup", not failed, "; ".join(failed) if failed else
                   "streams, events, modules and memory destroyed; primary context popped "
                   "and released"))
    return report


def _run(cuda: Cuda, report: Report, s: Settings, nvrtc, emit) -> None:
    info = cuda.info()
    report.device = info.to_dict()
    cc = info.compute_capability
    emit(Check("device", True, f"{info.name}, compute capability {cc[0]}.{cc[1]}, {info.sms} "
               f"SMs, {'integrated' if info.integrated else 'discrete'}, L2 "
               f"{info.l2_bytes / 2**20:g} MiB, driver {info.driver_version} ({info.binding})"))
    primary = cuda.current_is_primary() and cuda.primary_active()
    emit(Check("primary context", primary, "retained, current on this thread and active"
               if primary else "the current context is not the device's active primary one"))
    high, lows = _streams(cuda, emit)
    probes, compiled = _probes(cuda, info, s, nvrtc, emit)
    bench = Bench(cuda, info, probes, s)
    for step in (bench.calibrate_clock, bench.blocking_sync, bench.zero_copy):
        emit(step(lows[0]))
    report.sm_clock_mhz = round(bench.cycles_per_ms / 1e3, 1)
    for kind in KINDS:
        bench.tune(kind, lows[0])
    report.probes = [_probe_info(probes[k], k, compiled[k]) for k in KINDS]
    _solo(bench, lows[0], report, emit)
    _corun(bench, lows, report, emit)
    _priority(bench, high, lows, report, emit)


def _streams(cuda: Cuda, emit) -> tuple[object, list]:
    least, greatest = cuda.priority_range()
    high = cuda.stream(greatest)
    lows = [cuda.stream(least) for _ in range(LOW_STREAMS)]
    got_high, got_lows = cuda.stream_priority(high), [cuda.stream_priority(s) for s in lows]
    ok = greatest < least and got_high == greatest and all(p == least for p in got_lows)
    emit(Check("priority streams", ok, f"range {least} (least) .. {greatest} (greatest); "
               f"high-priority stream at {got_high}, low ones at "
               f"{', '.join(map(str, got_lows))}"
               + ("" if greatest < least else ": this device has no stream priorities")))
    return high, lows


def _probes(cuda: Cuda, info: DeviceInfo, s: Settings, nvrtc,
            emit) -> tuple[dict[str, Loaded], dict[str, Compiled]]:
    try:
        nv = Nvrtc(nvrtc)
        arch = nv.target(info.compute_capability, s.prefer_cubin)
        compiled = {k: nv.compile(PROBES[k].source(), PROBES[k].file, arch) for k in KINDS}
    except (BackendUnavailable, ProbeCompileError) as e:
        emit(Check("nvrtc", False, f"{e}; nothing to launch, so no probe measurements"))
        raise _Stop from None
    emit(Check("nvrtc", True, f"NVRTC {nv.version} ({nv.library or 'as the binding loads it'}"
               f"): {', '.join(PROBES[k].file for k in KINDS)} for {arch}: " + ", ".join(
                   f"{k} {c.image_kind} {len(c.image) / 1024:.1f} KiB in {c.compile_ms:.0f} ms"
                   for k, c in compiled.items())))
    loaded, notes = {}, []
    for kind in KINDS:
        try:
            loaded[kind], compiled[kind] = _load(cuda, info, kind, compiled[kind])
        except CudaDriverError as e:
            emit(Check("modules", False, f"{PROBES[kind].file}: {e}"))
            raise _Stop from None
        notes.append(f"{PROBES[kind].entry}: {loaded[kind].registers} registers, "
                     f"{loaded[kind].blocks_per_sm} blocks of {BLOCK_THREADS} per SM")
    ok = all(p.blocks_per_sm > 0 for p in loaded.values())
    emit(Check("modules", ok, "loaded; " + "; ".join(notes)))
    if not ok:
        raise _Stop
    return loaded, compiled


def _load(cuda: Cuda, info: DeviceInfo, kind: str, compiled: Compiled) -> tuple[Loaded, Compiled]:
    """Load the CUBIN, or its PTX where the driver takes no CUBIN from this NVRTC."""
    try:
        module = cuda.load(compiled.image)
    except CudaDriverError:
        if not compiled.cubin:
            raise
        compiled = Compiled(compiled.name, compiled.arch, compiled.ptx, b"", compiled.compile_ms)
        module = cuda.load(compiled.ptx)
    function = cuda.function(module, PROBES[kind].entry)
    per_sm = cuda.blocks_per_sm(function, BLOCK_THREADS)
    return Loaded(PROBES[kind], function, cuda.registers(function), per_sm,
                  info.sms * per_sm), compiled


def _probe_info(probe: Loaded, kind: str, c: Compiled) -> ProbeInfo:
    return ProbeInfo(kind, c.arch, c.image_kind, len(c.ptx), len(c.cubin), round(c.compile_ms, 1),
                     probe.registers, BLOCK_THREADS, probe.blocks_per_sm, probe.work)


def _solo(bench: Bench, stream, report: Report, emit) -> None:
    for kind in KINDS:
        probe = bench.probes[kind]
        for fraction in bench.s.solo_fractions:
            grid = probe.grid(fraction)
            times = bench.solo(kind, grid, stream)
            median = statistics.median(times)
            rate, unit = bench.rate(kind, grid, median)
            report.solo.append(SoloRow(kind, grid, round(grid / probe.capacity, 3),
                                       round(median, 4), round(min(times), 4), round(rate, 1),
                                       unit))
    emit(Check("solo", True, f"{len(report.solo)} probe sizes, {bench.s.runs} runs each"))


def _corun(bench: Bench, lows: list, report: Report, emit) -> None:
    load_stream, victim_stream = lows
    for victim in KINDS:
        vp = bench.probes[victim]
        for vf in bench.s.corun_fractions:
            vgrid = vp.grid(vf)
            solo = bench.solo_ms(victim, vgrid, victim_stream)
            spin = bench.spin_cycles(bench.s.cover * solo)
            for load in KINDS:
                lp = bench.probes[load]
                for lf in bench.s.corun_fractions:
                    lgrid = lp.grid(lf)
                    times, covered = bench.corun(victim, vgrid, victim_stream, load, lgrid,
                                                 load_stream, spin)
                    ms = statistics.median(times)
                    report.corun.append(CorunCell(
                        victim, vgrid, round(vgrid / vp.capacity, 3), load, lgrid,
                        round(lgrid / lp.capacity, 3), round(solo, 4), round(ms, 4),
                        round(ms / solo, 3), covered))
    uncovered = sum(not c.covered for c in report.corun)
    emit(Check("co-runs", True, f"{len(report.corun)} victim x load pairs on two streams of "
               f"equal priority" + (f"; {uncovered} outlasted their load (slowdown is a lower "
                                    "bound there)" if uncovered else "")))


def _priority(bench: Bench, high, lows: list, report: Report, emit) -> None:
    load_stream, low_victim = lows
    for victim in KINDS:
        probe = bench.probes[victim]
        grid = probe.grid(bench.s.priority_fraction)
        solo = bench.solo_ms(victim, grid, low_victim)
        load_grid, spin = bench.priority_load(solo)
        on = {}
        for name, stream in (("high", high), ("low", low_victim)):
            times, _ = bench.corun(victim, grid, stream, "compute", load_grid, load_stream, spin)
            on[name] = statistics.median(times)
        keeps = on["high"] / solo <= bench.s.keep_tolerance
        report.priority.append(PriorityRow(
            victim, grid, round(grid / probe.capacity, 3), load_grid, round(solo, 4),
            round(on["high"], 4), round(on["low"], 4), round(on["high"] / solo, 3),
            round(on["low"] / solo, 3), keeps))
    rows = report.priority
    kept = [r.victim for r in rows if r.keeps_solo_time]
    emit(Check("stream priority", True, "beside a low-priority load of many waves, on the "
               "high-priority stream " + ", ".join(f"{r.victim} {r.high_slowdown:.2f}x"
                                                  for r in rows)
               + " of solo time (on a low-priority one " + ", ".join(
                   f"{r.low_slowdown:.2f}x" for r in rows) + f"); within "
               f"{bench.s.keep_tolerance:.2f}x: {', '.join(kept) if kept else 'none'}"))
