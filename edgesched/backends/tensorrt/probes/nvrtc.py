"""Compiling the probe kernels with NVRTC, for one compute capability.

NVRTC needs no GPU: CI compiles every probe for Xavier (7.2) and Orin (8.7) on x86-64. Its C API
is a dozen stable functions, so they are called through ctypes: compiling needs only libnvrtc,
not cuda-python, whose wheel imports `cuda` into every Python process at start-up (a .pth
file). Where the library comes from: JetPack's CUDA on a Jetson (/usr/local/cuda/lib64, on the
loader's path), else the `nvidia-cuda-nvrtc-cu12` wheel (`pip install 'edgesched[nvrtc]'`),
whose directory the loader does not search: `load_library` looks there too, so nobody has to
set LD_LIBRARY_PATH.

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
MAJORS = (12, 13, 11)      # libnvrtc.so.MAJOR, tried in this order


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


def load_library() -> tuple[ctypes.CDLL, str] | None:
    """libnvrtc and where it came from ("loader path" or a file); None where there is none."""
    for major in MAJORS:
        try:
            return ctypes.CDLL(f"libnvrtc.so.{major}"), "loader path"
        except OSError:
            pass
        for path in library_candidates(major):
            if path.is_file():
                try:
                    return ctypes.CDLL(str(path)), str(path)
                except OSError:
                    continue
    return None


class _Status(int):
    """An nvrtcResult with the name NVRTC gives it, as cuda-python's enum has one."""

    name = ""


_P = ctypes.c_void_p
_SIGNATURES = {      # nvrtc.h; every function returns an nvrtcResult (int)
    "nvrtcVersion": [ctypes.POINTER(ctypes.c_int)] * 2,
    "nvrtcGetNumSupportedArchs": [ctypes.POINTER(ctypes.c_int)],
    "nvrtcGetSupportedArchs": [ctypes.POINTER(ctypes.c_int)],
    "nvrtcCreateProgram": [ctypes.POINTER(_P), ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
                           ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_char_p)],
    "nvrtcCompileProgram": [_P, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)],
    "nvrtcDestroyProgram": [ctypes.POINTER(_P)],
    "nvrtcGetProgramLogSize": [_P, ctypes.POINTER(ctypes.c_size_t)],
    "nvrtcGetProgramLog": [_P, ctypes.c_char_p],
    "nvrtcGetPTXSize": [_P, ctypes.POINTER(ctypes.c_size_t)],
    "nvrtcGetPTX": [_P, ctypes.c_char_p],
    "nvrtcGetCUBINSize": [_P, ctypes.POINTER(ctypes.c_size_t)],
    "nvrtcGetCUBIN": [_P, ctypes.c_char_p],
}


class CtypesNvrtc:
    """libnvrtc's functions with cuda-python's calling convention: each returns a tuple of the
    status and the outputs, so `Nvrtc` drives this, cuda-python's binding or a test fake alike.
    A function this libnvrtc lacks (nvrtcGetCUBIN before 11.1) is simply not an attribute."""

    def __init__(self, lib: ctypes.CDLL, where: str):
        self.library = where
        self._lib = lib
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        lib.nvrtcGetErrorString.argtypes = [ctypes.c_int]
        self._fn = {}
        for name, argtypes in _SIGNATURES.items():
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.restype, fn.argtypes = ctypes.c_int, argtypes
                self._fn[name] = fn
        # Newer than 11.0: attributes only where this libnvrtc has them (Nvrtc asks hasattr).
        if "nvrtcGetCUBIN" in self._fn:
            self.nvrtcGetCUBINSize = lambda prog: self._size("nvrtcGetCUBINSize", prog)
            self.nvrtcGetCUBIN = lambda prog, buffer: self._into("nvrtcGetCUBIN", prog, buffer)
        if "nvrtcGetSupportedArchs" in self._fn:
            self.nvrtcGetSupportedArchs = self._supported_archs

    def _status(self, code: int) -> _Status:
        status = _Status(code)
        status.name = (self._lib.nvrtcGetErrorString(code) or b"").decode()
        return status

    def nvrtcVersion(self):
        major, minor = ctypes.c_int(), ctypes.c_int()
        status = self._fn["nvrtcVersion"](ctypes.byref(major), ctypes.byref(minor))
        return self._status(status), major.value, minor.value

    def _supported_archs(self):
        count = ctypes.c_int()
        status = self._fn["nvrtcGetNumSupportedArchs"](ctypes.byref(count))
        archs = (ctypes.c_int * max(count.value, 1))()
        if status == 0:
            status = self._fn["nvrtcGetSupportedArchs"](archs)
        return self._status(status), list(archs[:count.value])

    def nvrtcCreateProgram(self, source: bytes, name: bytes, headers: int, sources, names):
        """No headers: the probes include none (`headers` must be 0)."""
        if headers:
            raise ValueError("CtypesNvrtc compiles sources without headers")
        prog = _P()
        status = self._fn["nvrtcCreateProgram"](ctypes.byref(prog), source, name, 0, None, None)
        return self._status(status), prog

    def nvrtcCompileProgram(self, prog, count: int, options: list[bytes]):
        array = (ctypes.c_char_p * count)(*options)
        return (self._status(self._fn["nvrtcCompileProgram"](prog, count, array)),)

    def nvrtcDestroyProgram(self, prog):
        return (self._status(self._fn["nvrtcDestroyProgram"](ctypes.byref(prog))),)

    def _size(self, fn: str, prog):
        size = ctypes.c_size_t()
        return self._status(self._fn[fn](prog, ctypes.byref(size))), size.value

    def _into(self, fn: str, prog, buffer: bytearray):
        out = (ctypes.c_char * len(buffer)).from_buffer(buffer)   # NVRTC writes in place
        return (self._status(self._fn[fn](prog, out)),)

    def nvrtcGetProgramLogSize(self, prog):
        return self._size("nvrtcGetProgramLogSize", prog)

    def nvrtcGetProgramLog(self, prog, buffer):
        return self._into("nvrtcGetProgramLog", prog, buffer)

    def nvrtcGetPTXSize(self, prog):
        return self._size("nvrtcGetPTXSize", prog)

    def nvrtcGetPTX(self, prog, buffer):
        return self._into("nvrtcGetPTX", prog, buffer)


def import_nvrtc():
    """NVRTC through ctypes on the libnvrtc found; BackendUnavailable, one line, without one."""
    found = load_library()
    if found is None:
        raise BackendUnavailable(f"the NVRTC library (libnvrtc.so.{MAJORS[0]}) is not "
                                 f"installed: {INSTALL_HINT}")
    return CtypesNvrtc(*found)


class Nvrtc:
    """The few NVRTC calls the probes need; every call's status is checked."""

    def __init__(self, module=None):
        self._nv = module if module is not None else import_nvrtc()
        self.library = getattr(self._nv, "library", None)   # where libnvrtc was loaded from
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
