"""A fake `cuda.bindings.nvrtc`: no compiler, but the real binding's calling conventions and a
PTX whose `.entry` signatures come from the source's `extern "C" __global__` functions, so the
fake driver checks launches against what the .cu file declares.

Checked like the real one (NVRTC 12.x): numOptions / numHeaders equal their lists; options
are bytes; exactly one --gpu-architecture (-arch) naming a supported compute_XY or sm_XY
(else NVRTC_ERROR_INVALID_OPTION with the real log line); no #include (NVRTC has no system
headers); a parameter type it cannot map is a compilation error. A __global__ function
without extern "C" gets a C++-mangled entry name, as with the real compiler. GetCUBINSize is
0 for a compute_XY target; reading into a too-small buffer fails; programs not destroyed are
reported by `live`.
"""
from __future__ import annotations

import enum
import re
import types

SUPPORTED_ARCHS = [50, 52, 53, 60, 61, 62, 70, 72, 75, 80, 86, 87, 89, 90]
KERNEL = re.compile(r'(extern\s+"C"\s+)?__global__\s+void\s+(\w+)\s*\(([^)]*)\)', re.S)
ARCH = re.compile(rb"^(?:--gpu-architecture=|-arch=)(compute|sm)_(\d+)$")

nvrtcResult = enum.IntEnum("nvrtcResult", {
    "NVRTC_SUCCESS": 0, "NVRTC_ERROR_OUT_OF_MEMORY": 1, "NVRTC_ERROR_PROGRAM_CREATION_FAILURE": 2,
    "NVRTC_ERROR_INVALID_INPUT": 3, "NVRTC_ERROR_INVALID_PROGRAM": 4,
    "NVRTC_ERROR_INVALID_OPTION": 5, "NVRTC_ERROR_COMPILATION": 6})
OK, INVALID_INPUT, INVALID_PROGRAM, INVALID_OPTION, COMPILATION = 0, 3, 4, 5, 6


def ptx_type(c_type: str) -> str | None:
    """The .param type NVRTC gives a C parameter type (what real PTX shows for the probes)."""
    t = " ".join(c_type.replace("const", " ").replace("__restrict__", " ").split())
    if "*" in t:
        return "u64"
    return {"int": "u32", "unsigned int": "u32", "unsigned": "u32", "float": "f32",
            "double": "f64", "long long": "u64", "unsigned long long": "u64",
            "size_t": "u64"}.get(t)


def parse_kernels(source: str) -> list[tuple[bool, str, list[tuple[str, str]]]]:
    """[(extern "C"?, name, [(C type, parameter name)])] of every __global__ function."""
    found = []
    for m in KERNEL.finditer(source):
        params = []
        for p in filter(None, (x.strip() for x in m.group(3).split(","))):
            c_type, name = re.match(r"(.*?)(\w+)$", p, re.S).groups()
            params.append((" ".join(c_type.split()), name))
        found.append((bool(m.group(1)), m.group(2), params))
    return found


class Program:
    def __init__(self, source: bytes, name: bytes):
        self.source, self.name = source, name
        self.ptx = self.cubin = b""
        self.log = b"\0"
        self.alive = True


def make_nvrtc(violations: list[str] | None = None) -> types.ModuleType:
    nv = types.ModuleType("fake.cuda.bindings.nvrtc")
    nv.violations = violations if violations is not None else []
    nv.programs = []
    nv.nvrtcResult = nvrtcResult
    nv.live = lambda: [p for p in nv.programs if p.alive]

    def r(status, *outputs):
        return (nvrtcResult(status), *outputs)

    def violate(text: str) -> None:
        nv.violations.append(f"nvrtc: {text}")

    def nvrtcVersion():
        return r(OK, 12, 9)

    def nvrtcGetSupportedArchs():
        return r(OK, list(SUPPORTED_ARCHS))

    def nvrtcCreateProgram(src, name, num_headers, headers, include_names):
        if not isinstance(src, bytes) or not isinstance(name, bytes):
            raise TypeError("expected bytes for src and name")
        if num_headers != len(headers) or len(headers) != len(include_names):
            violate("nvrtcCreateProgram: numHeaders does not match the header lists")
            return r(INVALID_INPUT, None)
        program = Program(src, name)
        nv.programs.append(program)
        return r(OK, program)

    def _live(prog) -> Program | None:
        if not isinstance(prog, Program) or not prog.alive:
            violate("a program that was never created or is destroyed")
            return None
        return prog

    def nvrtcCompileProgram(prog, num_options, options):
        p = _live(prog)
        if p is None:
            return r(INVALID_PROGRAM)
        if num_options != len(options) or not all(isinstance(o, bytes) for o in options):
            violate(f"nvrtcCompileProgram: numOptions {num_options} for {options!r}")
            return r(INVALID_INPUT)
        arches = [ARCH.match(o) for o in options if o.startswith((b"--gpu-architecture", b"-arch"))]
        if len(arches) != 1 or arches[0] is None or int(arches[0].group(2)) not in SUPPORTED_ARCHS:
            p.log = b"nvrtc: error: invalid value for --gpu-architecture (-arch)\n\0"
            return r(INVALID_OPTION)
        kind, arch = arches[0].group(1).decode(), int(arches[0].group(2))
        text = p.source.decode()
        if "#include" in text:
            p.log = (f"{p.name.decode()}(1): catastrophic error: cannot open source "
                     f"file\n\0").encode()
            return r(COMPILATION)
        entries = []
        for extern_c, name, params in parse_kernels(text):
            types_ = [ptx_type(c_type) for c_type, _ in params]
            if None in types_:
                bad = params[types_.index(None)][0]
                p.log = f'{p.name.decode()}: error: identifier "{bad}" is undefined\n\0'.encode()
                return r(COMPILATION)
            entry = name if extern_c else f"_Z{len(name)}{name}" + "".join(t[0] for t in types_)
            body = ",\n".join(f"\t.param .{t} {entry}_param_{i}" for i, t in enumerate(types_))
            entries.append(f".visible .entry {entry}(\n{body}\n)\n{{\n\tret;\n}}\n")
        ptx = (f"//\n// Generated by the edgesched test fake of NVRTC\n//\n\n.version 8.8\n"
               f".target sm_{arch}\n.address_size 64\n\n" + "\n".join(entries))
        p.ptx = ptx.encode() + b"\0"
        p.cubin = b"\x7fELF" + f"fake-cubin sm_{arch}\n".encode() + ptx.encode() \
            if kind == "sm" else b""
        p.log = b"\0"
        return r(OK)

    def _size(attr):
        def size(prog):
            p = _live(prog)
            return r(OK, len(getattr(p, attr))) if p else r(INVALID_PROGRAM, None)
        return size

    def _read(attr):
        def read(prog, buffer):
            p = _live(prog)
            if p is None:
                return r(INVALID_PROGRAM)
            data = getattr(p, attr)
            view = memoryview(buffer)
            if view.readonly or view.nbytes < len(data):
                violate(f"reading {attr} into a buffer that is read-only or too small")
                return r(INVALID_INPUT)
            view[:len(data)] = data
            return r(OK)
        return read

    def nvrtcDestroyProgram(prog):
        p = _live(prog)
        if p is None:
            return r(INVALID_PROGRAM)
        p.alive = False
        return r(OK)

    def nvrtcGetErrorString(result):
        return r(OK, nvrtcResult(result).name.encode())

    for name, value in list(locals().items()):
        if name.startswith("nvrtc") and callable(value):
            setattr(nv, name, value)
    for attr, fn in (("PTX", "ptx"), ("CUBIN", "cubin"), ("ProgramLog", "log")):
        setattr(nv, f"nvrtcGet{attr}Size", _size(fn))
        setattr(nv, f"nvrtcGet{attr}", _read(fn))
    return nv
