"""Build Tollway's native kernels (Cython) when a compiler is present.

`pip install .` always works: if Cython or a C compiler is missing, or
TOLLWAY_NO_EXTENSIONS=1 is set at build time, the gateway installs "pure" and runs
the plain-Python twins of every kernel. The build says which it produced.
"""
import os
import sys
from glob import glob
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# The folders at the repository's top level and their place under the one import root.
ROOTS = {"core": "tollway.core", "gateway": "tollway.gateway", "ext": "tollway.ext"}


class OptionalBuildExt(build_ext):
    """Compile the kernels, but fall back to a pure install instead of failing."""

    def run(self):
        if not self.extensions:
            print(f"tollway: building PURE (kernels not compiled: {_NO_KERNELS})", file=sys.stderr)
            return
        try:
            super().run()
            print("tollway: building ACCELERATED (Cython kernels compiled)", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 - any build failure means "pure"
            print(f"tollway: building PURE (kernels not compiled: {exc})", file=sys.stderr)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            print(f"tollway: {ext.name} not compiled ({exc}); its pure twin will be used", file=sys.stderr)


_NO_KERNELS = "no ext/*.pyx sources"  # why extensions() found nothing to compile
# C libraries a kernel links against. A kernel whose library (or its headers: Debian's
# libsqlite3-dev) is missing is not compiled, and its pure twin runs.
LIBRARIES = {"_sqlrows": ["sqlite3"]}


def extensions():
    global _NO_KERNELS
    if os.environ.get("TOLLWAY_NO_EXTENSIONS"):
        _NO_KERNELS = "TOLLWAY_NO_EXTENSIONS is set"
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        _NO_KERNELS = "Cython is not installed here (pip install cython)"
        return []
    sources = sorted(glob("ext/*.pyx"))
    if not sources:
        return []
    modules = [Extension(f"tollway.ext.{Path(src).stem}", [src], libraries=LIBRARIES.get(Path(src).stem, []))
               for src in sources]
    directives = {"language_level": "3", "boundscheck": False, "wraparound": False, "cdivision": True}
    return cythonize(modules, compiler_directives=directives, quiet=True)


def packages():
    """Every folder with an __init__.py under core/, gateway/ and ext/, named under `tollway`
    (pyproject.toml maps each root folder to its package), so a new sub-package needs no entry."""
    found = []
    for folder, package in ROOTS.items():
        for init in sorted(Path(folder).rglob("__init__.py")):
            rel = init.parent.relative_to(folder).parts
            found.append(".".join((package, *rel)))
    return found


setup(packages=packages(), ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
