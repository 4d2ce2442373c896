"""Builds the preload library (captagent_tls/preload/sslkeylog.so) along with the package.

Everything else is in pyproject.toml.  The library is optional: without a C compiler or the
OpenSSL headers the package installs all the same, and ``captagent-tls-keylog`` then says how
to build it.
"""

import importlib.util
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PRELOAD = HERE / "src" / "captagent_tls" / "preload"


def _load_build_module():
    # By path, not by import: the package's __init__ and its dependencies are not there yet.
    spec = importlib.util.spec_from_file_location("_sslkeylog_build", PRELOAD / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithPreload(build_py):
    def run(self):
        super().run()
        build = _load_build_module()
        if getattr(self, "editable_mode", False):
            target = PRELOAD / build.LIBRARY_NAME  # editable: the package is the source tree
        else:
            target = Path(self.build_lib) / "captagent_tls" / "preload" / build.LIBRARY_NAME
        try:
            build.compile_library(target)
        except build.BuildError as exc:
            if not getattr(self, "editable_mode", False) and target.exists():
                target.unlink()  # from an earlier build in the same build/ folder
            print(f"warning: the key-log preload library was not built: {exc}; the package "
                  "works without it, and 'captagent-tls-keylog --build' builds it later",
                  file=sys.stderr)


class PlatformDistribution(Distribution):
    # The wheel may hold a compiled library: tag it for this platform, never as pure Python.
    def has_ext_modules(self):
        return True


setup(cmdclass={"build_py": BuildPyWithPreload}, distclass=PlatformDistribution)
