"""The layer rule import-linter cannot read: compiled kernels import only their own twin.

import-linter (run by .ci/lint) checks the Python modules; a .pyx is compiled, so its imports
are checked here from the source."""
from __future__ import annotations

import re
from pathlib import Path

from tollway.ext import KERNELS

EXT = Path(__file__).resolve().parent.parent / "ext"
_PY_IMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+import\b|import\s+([\w.]+))")


def _python_imports(source: str) -> set[str]:
    """Modules a Cython source imports at run time (cimports are C declarations, not modules)."""
    found = set()
    for line in source.splitlines():
        if "cimport" in line:
            continue
        m = _PY_IMPORT.match(line)
        if m:
            found.add(m.group(1) or m.group(2))
    return found


def test_every_kernel_is_in_the_table_and_imports_only_its_twin() -> None:
    sources = sorted(EXT.glob("_*.pyx"))
    assert {f"tollway.ext.{p.stem}" for p in sources} == {compiled for _, compiled in KERNELS.values()}
    for path in sources:
        twin = KERNELS[path.stem.lstrip("_")][0]
        imports = {name for name in _python_imports(path.read_text()) if name.split(".")[0] == "tollway"}
        assert imports <= {twin, "tollway.ext.usage"}, f"{path.name} imports {sorted(imports - {twin})}"


def test_the_check_sees_a_foreign_import() -> None:
    """The parser above is what the rule rests on: it must see both import forms, and not cimports."""
    source = "from cpython.bytes cimport PyBytes_AS_STRING\nfrom tollway.core.config import Config\nimport os\n"
    assert _python_imports(source) == {"tollway.core.config", "os"}
