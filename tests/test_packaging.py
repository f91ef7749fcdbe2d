"""`pip install .` (not only editable) gives a working gateway: kernels, data files, command."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True, timeout=600)
    return next(out.glob("tollway-*.whl"))


@pytest.mark.timeout(900)
def test_wheel_ships_kernels_data_and_command(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {"tollway/core/data/tiktoken/9b5ad71b2ce5302211f9c61530b329a4922fc6a4",
            "tollway/core/data/tiktoken/fb374d419588a4632f3f557e76b4b70aebbca790"} <= set(names)
    for kernel in ("_sse", "_buckets", "_jsonscan", "_ratelimit"):
        assert any(n.startswith(f"tollway/ext/{kernel}.") and n.endswith(".so") for n in names), kernel
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "tollway = tollway.gateway.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert not any(n.startswith("tests/") for n in names)


def test_wheel_installs_one_import_root(wheel):
    """Nothing but `tollway` lands in site-packages: no `core`, `gateway` or `ext` to collide
    with a user's own modules. `tollway` is a namespace package (no __init__.py of its own)."""
    names = zipfile.ZipFile(wheel).namelist()
    roots = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert roots == {"tollway"}
    assert {"tollway/core/__init__.py", "tollway/gateway/__init__.py", "tollway/ext/__init__.py"} <= set(names)
    assert "tollway/__init__.py" not in names


@pytest.mark.timeout(900)
def test_installed_wheel_runs_outside_the_repo(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site), "TIKTOKEN_CACHE_DIR": str(tmp_path / "empty-cache")}
    code = ("import tollway.gateway.cli; from tollway.core import kernels; "
            "from tollway.core.accounting.tokens import count_tokens;"
            "assert kernels.__file__.startswith(%r), kernels.__file__;"
            "print(kernels.ACCELERATED, count_tokens('hello world', 'gpt-4o'))" % str(site))
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "2"]
