"""What an import statement loads, measured in a fresh interpreter (tests import it as
`tests.imported`).

The interpreter runs with -S: no site module, so no .pth hook of another installed package
(cuda-bindings' wheel imports `cuda` at every start-up) is mistaken for one of edgesched's
imports. The environment's site-packages are put on the path by hand, without running their
.pth files, and the repository root comes first, so `edgesched` is this checkout.
"""
from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Not edgesched's to import at this level: device, transport, model and config libraries.
HEAVY = frozenset({"tensorrt", "pycuda", "cuda", "jtop", "pynvml", "onnxruntime", "onnx",
                   "zmq", "msgpack", "yaml", "prometheus_client", "matplotlib"})


def loaded_by(statement: str) -> set[str]:
    """Top-level names of the modules `statement` loads beyond a bare -S interpreter."""
    paths = [str(ROOT)] + list(dict.fromkeys(
        sysconfig.get_paths()[key] for key in ("purelib", "platlib")))
    code = (f"import sys; sys.path[:0] = {paths!r}; before = set(sys.modules)\n{statement}\n"
            "import json; print(json.dumps(sorted({m.split('.')[0] for m in "
            "set(sys.modules) - before})))")
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def outside_stdlib(modules: set[str]) -> set[str]:
    return {m for m in modules if m not in sys.stdlib_module_names and not m.startswith("_")}
