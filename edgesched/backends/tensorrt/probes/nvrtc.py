"""Compiling the probe kernels with NVRTC through cuda-python, for one compute capability.

NVRTC needs no GPU: CI compiles every probe for Xavier (7.2) and Orin (8.7) on x86-64. Where the
library comes from: JetPack's CUDA on a Jetson (/usr/local/cuda/lib64, on the loader's path),
else the `nvidia-cuda-nvrtc-cu12` wheel (`pip install 'edgesched[nvrtc]'`). Recent cuda-bindings
find the wheel themselves (cuda-pathfinder); older ones only dlopen("libnvrtc.so.12") by name,
which misses the wheel's directory. `load` therefore loads the first libnvrtc it finds, RTLD_GLOBAL,
before the binding's first call: a later dlopen of the same soname returns the loaded copy, so
nobody has to set LD_LIBRARY_PATH.

Target: a CUBIN for sm_XY where this NVRTC knows the device's architecture (machine code: no
JIT at load time, so a pip NVRTC newer than the device's driver still loads under CUDA's minor
version compatibility, where its PTX would fail with CUDA_ERROR_UNSUPPORTED_PTX_VERSION), else
PTX for the highest architecture at or below the device's (the driver JITs it forward).
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from edgesched.errors import BackendUnavailable, EdgeschedError

INSTALL_HINT = "pip install 'edgesched[nvrtc]' (or use JetPack's CUDA)"


class ProbeCompileError(EdgeschedError):
    """NVRTC refused a probe source or an architecture; str() names both and the log's first
    line."""

    code = "PROBE_COMPILE_ERROR"


@dataclass(frozen=True)
class Compiled:
    name: str              # the .cu file
    arch: str              # what --gpu-architecture got: sm_87 (CUBIN) or compute_87 (PTX)
    ptx: bytes             # NUL-terminated, as cuModuleLoadData wants PTX
    cubin: bytes           # empty for a compute_XY target
    compile_ms: float

    @property
    def image(self) -> bytes:
        """What to hand cuModuleLoadData: the CUBIN where there is one, else the PTX."""
        return self.cubin or self.ptx

    @property
    def image_kind(self) -> str:
        return "cubin" if self.cubin else "ptx"


def import_nvrtc():
    """cuda-python's NVRTC binding (`cuda.bindings.nvrtc`, or the older `cuda.nvrtc`)."""
    try:
        from cuda.bindings import nvrtc
        return nvrtc
    except ImportError:
        pass
    try:
        from cuda import nvrtc
        return nvrtc
    except ImportError:
        raise BackendUnavailable(f"cuda-python's NVRTC binding is not installed: "
                                 f"{INSTALL_HINT}") from None


def _bindings_major(default: int = 12) -> int:
    try:
        from cuda.bindings import __version__
        return int(str(__version__).split(".")[0])
    except (ImportError, ValueError):
        return default


def library_candidates(major: int) -> list[Path]:
    """Where libnvrtc.so.MAJOR may be, most specific first (the wheel, then CUDA installs)."""
    name, found = f"libnvrtc.so.{major}", []
    for package in (f"nvidia.cu{major}", "nvidia.cuda_nvrtc"):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        for folder in (spec.submodule_search_locations or []) if spec else []:
            found.append(Path(folder) / "lib" / name)
    roots = [os.environ.get(v) for v in ("CUDA_HOME", "CUDA_PATH")] + ["/usr/local/cuda"]
    for root in filter(None, roots):
        found += [Path(root) / "lib64" / name,
                  Path(root) / "targets" / f"{platform.machine()}-linux" / "lib" / name]
    return found


def preload_library(major: int | None = None) -> str | None:
    """Load libnvrtc (RTLD_GLOBAL) so the binding's dlopen by soname finds it. Returns where it
    came from: "loader path", a file, or None where there is none (the binding then says so)."""
    major = major or _bindings_major()
    try:
        ctypes.CDLL(f"libnvrtc.so.{major}", mode=ctypes.RTLD_GLOBAL)
        return "loader path"
    except OSError:
        pass
    for path in library_candidates(major):
        if path.is_file():
            try:
                ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
                return str(path)
            except OSError:
                continue
    return None


class Nvrtc:
    """The few NVRTC calls the probes need; every call's status is checked."""

    def __init__(self, module=None, *, preload: bool = True):
        self.library = preload_library() if preload and module is None else None
        self._nv = module if module is not None else import_nvrtc()
        try:
            major, minor = self._call("nvrtcVersion")
        except ProbeCompileError:
            raise
        except Exception as e:    # the binding could not dlopen libnvrtc (its type varies)
            raise BackendUnavailable(f"NVRTC library not found ({_first_line(e)}): "
                                     f"{INSTALL_HINT}") from None
        self.version = f"{int(major)}.{int(minor)}"

    def _call(self, fn: str, *args):
        result = getattr(self._nv, fn)(*args)
        status = result[0]
        if int(status) != 0:
            raise ProbeCompileError(f"{fn} failed: {getattr(status, 'name', status)}")
        return result[1:] if len(result) > 2 else (result[1] if len(result) == 2 else None)

    def supported_archs(self) -> list[int] | None:
        """e.g. [50, ..., 87, 90]; None where this NVRTC cannot say (before 11.2)."""
        if not hasattr(self._nv, "nvrtcGetSupportedArchs"):
            return None
        return sorted(int(a) for a in self._call("nvrtcGetSupportedArchs"))

    def target(self, cc: tuple[int, int], prefer_cubin: bool = True) -> str:
        """--gpu-architecture for a device of compute capability `cc` (see the module doc)."""
        wanted = cc[0] * 10 + cc[1]
        archs = self.supported_archs()
        if archs is None or wanted in archs:
            return f"{'sm' if prefer_cubin else 'compute'}_{wanted}"
        lower = [a for a in archs if a <= wanted]
        if not lower:
            raise ProbeCompileError(f"NVRTC {self.version} targets nothing at or below compute "
                                    f"capability {cc[0]}.{cc[1]} (it knows {archs})")
        return f"compute_{lower[-1]}"

    def compile(self, source: bytes, name: str, arch: str) -> Compiled:
        """Compile one CUDA C source for `arch` (compute_XY: PTX only; sm_XY: PTX and CUBIN)."""
        started = time.perf_counter()
        prog = self._call("nvrtcCreateProgram", source, name.encode(), 0, [], [])
        try:
            options = [f"--gpu-architecture={arch}".encode()]
            status = self._nv.nvrtcCompileProgram(prog, len(options), options)[0]
            if int(status) != 0:
                log = self._read(prog, "nvrtcGetProgramLogSize", "nvrtcGetProgramLog")
                text = log.rstrip(b"\0").decode(errors="replace").strip()
                raise ProbeCompileError(f"{name} for {arch}: {getattr(status, 'name', status)}"
                                        f": {(text.splitlines() or ['no log'])[0]}")
            ptx = self._read(prog, "nvrtcGetPTXSize", "nvrtcGetPTX")
            cubin = b""
            if arch.startswith("sm_") and hasattr(self._nv, "nvrtcGetCUBINSize"):
                cubin = self._read(prog, "nvrtcGetCUBINSize", "nvrtcGetCUBIN")
        finally:
            self._call("nvrtcDestroyProgram", prog)
        return Compiled(name, arch, ptx, cubin, 1e3 * (time.perf_counter() - started))

    def _read(self, prog, size_fn: str, read_fn: str) -> bytes:
        size = int(self._call(size_fn, prog))
        if size == 0:
            return b""
        buffer = bytearray(size)      # NVRTC writes into it (a NUL-terminated PTX or log)
        self._call(read_fn, prog, buffer)
        return bytes(buffer)


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]
