"""Fixtures that run a kernel test against the pure twin and the compiled kernel.

`tests/conftest.py` star-imports this module. Each `*_impl` fixture is parametrized with
"pure" (the twin, `tollway.ext.<name>`) and "compiled" (`tollway.ext._<name>`); the compiled case skips,
saying why, when the extension is not built. `compiled_or_skip` serves differential tests
that need both twins at once.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

from tollway.ext import KERNELS

__all__ = ["KERNEL_KINDS", "buckets_impl", "canonjson_impl", "compiled_or_skip", "jsonscan_impl", "kernel_module", "piiscan_impl", "ratelimit_impl",
           "rollup_impl", "sqlrows_impl", "sse_impl"]

KERNEL_KINDS = ("pure", "compiled")

_MODULES = KERNELS  # kernel name -> (pure twin module, compiled module), as the switch reads it


def compiled_or_skip(kernel: str) -> ModuleType:
    """The compiled module of `kernel`; skips the test if it is not built."""
    name = _MODULES[kernel][1]
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if os.environ.get("TOLLWAY_REQUIRE_EXTENSIONS"):  # CI: a missing build is a failure, not a skip
            pytest.fail(f"{name} is not built ({exc}) but TOLLWAY_REQUIRE_EXTENSIONS is set")
        pytest.skip(f"{name} is not built ({exc}); run `python setup.py build_ext --inplace`")


def kernel_module(kernel: str, kind: str) -> ModuleType:
    """The `kind` ("pure" or "compiled") module of `kernel`."""
    if kind == "pure":
        return importlib.import_module(_MODULES[kernel][0])
    return compiled_or_skip(kernel)


def _impl_fixture(kernel: str):  # noqa: ANN202 - a pytest fixture
    """`<kernel>_impl`: the kernel's pure twin, then its compiled module. Session-scoped so
    hypothesis tests may use it (it holds no per-test state)."""
    @pytest.fixture(params=KERNEL_KINDS, scope="session", name=f"{kernel}_impl")
    def impl(request: pytest.FixtureRequest) -> ModuleType:
        return kernel_module(kernel, request.param)
    return impl


sse_impl = _impl_fixture("sse")
buckets_impl = _impl_fixture("buckets")
jsonscan_impl = _impl_fixture("jsonscan")
ratelimit_impl = _impl_fixture("ratelimit")
piiscan_impl = _impl_fixture("piiscan")
sqlrows_impl = _impl_fixture("sqlrows")
rollup_impl = _impl_fixture("rollup")
canonjson_impl = _impl_fixture("canonjson")
