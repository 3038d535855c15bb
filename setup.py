"""Builds the Swift core and the C bridge into one stable-ABI extension, `uvc._native`.

`pip install .` and `pip install -e .` both run `swift build -c release` once and copy the
resulting shared library to where setuptools expects the extension.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
PRODUCT = "uvcnative"


def fail(what: str, how: str) -> None:
    sys.exit(f"\nuvc build: {what}.\n  {how}\n")


def python_pkgconfig_dir() -> str:
    """pkg-config must find the headers of the interpreter that builds, not the system one."""
    libpc = sysconfig.get_config_var("LIBPC") or ""
    include = sysconfig.get_paths()["include"]
    if not Path(include, "Python.h").exists():
        fail(f"Python headers not found at {include}",
             "Install them: apt-get install python3-dev (or your distribution's equivalent).")
    if not Path(libpc, f"python-{sysconfig.get_python_version()}.pc").exists():
        fail(f"no pkg-config file for this Python in {libpc!r}",
             "Install pkg-config and the Python development files (apt-get install pkg-config python3-dev).")
    return libpc


def check_toolchain(env: dict) -> str:
    swift = shutil.which("swift") or ("/opt/swift/usr/bin/swift" if Path("/opt/swift/usr/bin/swift").exists() else None)
    if swift is None:
        fail("the Swift toolchain (swift) is not on PATH",
             "Install Swift 6.1 or newer from https://swift.org/install and put its bin/ on PATH.")
    if shutil.which("pkg-config") is None:
        fail("pkg-config is not installed", "apt-get install pkg-config")
    if subprocess.run(["pkg-config", "--exists", "openblas"], env=env).returncode != 0:
        fail("OpenBLAS was not found by pkg-config", "apt-get install libopenblas-dev (or run scripts/setup.sh)")
    return swift


class SwiftBuildExt(build_ext):
    def build_extension(self, ext: Extension) -> None:
        env = dict(os.environ)
        env["PKG_CONFIG_PATH"] = os.pathsep.join(
            p for p in (python_pkgconfig_dir(), env.get("PKG_CONFIG_PATH", "")) if p)
        swift = check_toolchain(env)
        cmd = [swift, "build", "-c", "release", "--product", PRODUCT,
               "--package-path", str(ROOT), "-Xswiftc", "-static-stdlib"]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env=env)
        bin_dir = subprocess.run(cmd + ["--show-bin-path"], check=True, env=env,
                                 capture_output=True, text=True).stdout.strip()
        built = Path(bin_dir, f"lib{PRODUCT}.so")
        target = Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        # A copy beside the target, then a rename: a process that has the old library loaded keeps
        # its file (copying over it in place would change the pages it maps under it).
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(built, partial)
        os.replace(partial, target)


setup(
    ext_modules=[Extension("uvc._native", sources=[], py_limited_api=True)],
    cmdclass={"build_ext": SwiftBuildExt},
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
