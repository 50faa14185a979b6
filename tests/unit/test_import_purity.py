"""Import rules: the scheduler is pure, the package root loads no library it does not need,
and each heavy library stays behind the one module that uses it."""
from __future__ import annotations

from tests.imported import HEAVY, loaded_by, outside_stdlib


def test_the_scheduler_needs_numpy_at_most():
    assert outside_stdlib(loaded_by("import edgesched.sched")) <= {"edgesched", "numpy"}


def test_the_package_root_loads_no_device_transport_or_model_library():
    assert not HEAVY & loaded_by("import edgesched")


def test_the_client_loads_its_transport_and_nothing_heavier():
    loaded = loaded_by("from edgesched import Client")
    assert {"zmq", "msgpack"} <= loaded
    assert not (HEAVY - {"zmq", "msgpack"}) & loaded


def test_the_dtype_table_imports_only_numpy():
    assert outside_stdlib(loaded_by("import edgesched.dtypes")) <= {"edgesched", "numpy"}
