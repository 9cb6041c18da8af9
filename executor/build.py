"""Build the executor's Lambda zip: ``python executor/build.py --arch x86_64 --out dist/``.

The zip holds, at its root:

* ``handler.py`` -- the entry point (``handler.handler``);
* ``wukong/`` -- the package's Python files and Lua scripts, and the Cython
  ``wukong/_core`` extensions built for the runtime's Python (3.12) with a
  local Python 3.12 (they are version-specific: the Cython modules use
  CPython internals, ``array.array``, so the Limited API / abi3 is not an
  option);
* ``wukong_native/`` -- the Rust module, built by maturin (abi3, so the
  cp311-abi3 build loads on 3.12);
* third-party dependencies as manylinux wheels for the target architecture
  (``pip install --platform ... --only-binary=:all:``), pinned to the versions
  installed here: the client pickles task bodies with cloudpickle and the
  executor must read them.  boto3 is not packed: the runtime has it.

Checks: every shared object we compiled needs glibc <= 2.34 (the python3.12
runtime, Amazon Linux 2023), and the unzipped size is <= 250 MB (Lambda's
limit).  Each failure stops the build with a message that says what to do.

Cross-compiling the native parts for arm64 on an x86_64 host (or back) is not
supported: build on a host of the target architecture (e.g. Graviton for
arm64); the dependencies alone could be fetched for either.
"""

from __future__ import annotations

import argparse
import glob
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON_VERSION = "3.12"
MAX_GLIBC = (2, 34)  # Amazon Linux 2023, the python3.12 runtime
MAX_UNZIPPED = 250 * 1024 * 1024
DEPENDENCIES = ["dask", "numpy", "scipy", "cloudpickle", "redis", "hiredis", "orjson", "toolz", "partd", "fsspec", "pyyaml"]
# scipy: dask.array.linalg needs it (cholesky, solve_triangular: a seed example failed without it)
# Wheels the runtime's glibc (2.34) can load: manylinux2014 up to manylinux_2_34.
PLATFORMS = {
    arch: [f"manylinux2014_{m}", f"manylinux_2_28_{m}", f"manylinux_2_34_{m}"]
    for arch, m in (("x86_64", "x86_64"), ("arm64", "aarch64"))
}
HOST_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}
SKIP = ("__pycache__", "*.pyc", "*.c", "*.pyx", "*.pxd", "*.so")  # .so: the host's cp311 builds


class BuildError(Exception):
    """The zip cannot be built as asked; the message says why and what to do."""


def run(cmd: list[str], **kwargs) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run(cmd, check=True, **kwargs)


def pinned(names: list[str]) -> list[str]:
    """``name==version`` as installed here, so client and executor agree."""
    out = []
    for name in names:
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(name)
    return out


def install_dependencies(target: Path, arch: str) -> None:
    run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--target", str(target),
         *[f"--platform={p}" for p in PLATFORMS[arch]], "--implementation", "cp", "--python-version", PYTHON_VERSION,
         "--only-binary=:all:", *pinned(DEPENDENCIES)]
    )  # fmt: skip
    for extra in ("bin",):  # console scripts are of no use on Lambda
        shutil.rmtree(target / extra, ignore_errors=True)


def copy_package(target: Path) -> None:
    shutil.copytree(ROOT / "wukong", target / "wukong", ignore=shutil.ignore_patterns(*SKIP))
    shutil.copy(ROOT / "executor" / "handler.py", target / "handler.py")


def find_python312(given: str | None) -> str:
    candidates = [given] if given else [shutil.which(f"python{PYTHON_VERSION}")]
    if not given:
        candidates += sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{PYTHON_VERSION}*/bin/python3")))
    for c in filter(None, candidates):
        try:
            out = subprocess.run([c, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == str(tuple(map(int, PYTHON_VERSION.split(".")))):
            return c
    raise BuildError(
        f"the Cython extensions must be compiled by Python {PYTHON_VERSION} (the Lambda runtime's); "
        f"none found -- pass --python /path/to/python{PYTHON_VERSION}"
    )


def build_core(target: Path, python: str, work: Path) -> None:
    """Compile ``wukong._core`` for Python 3.12 from a copy of the sources."""
    tools = work / "buildtools"
    run([python, "-m", "pip", "install", "--quiet", "--target", str(tools), "Cython>=3.0", "setuptools>=68"])
    src = work / "core-src"
    shutil.copytree(ROOT / "wukong" / "_core", src / "wukong" / "_core", ignore=shutil.ignore_patterns("*.so", "*.c"))
    (src / "wukong" / "__init__.py").write_text("")
    shutil.copy(ROOT / "setup.py", src / "setup.py")
    env = {**os.environ, "PYTHONPATH": str(tools)}
    run([python, "setup.py", "--quiet", "build_ext", "--build-lib", str(target)], cwd=src, env=env)


def build_native(target: Path, work: Path, wheel: str | None) -> None:
    """The Rust module: maturin's abi3 wheel, unpacked."""
    if wheel is None:
        out = work / "wheels"
        run(["maturin", "build", "--release", "--out", str(out)], cwd=ROOT / "rust")  # its pyproject names Cargo.toml
        wheels = sorted(out.glob("wukong_native-*.whl"))
        if not wheels:
            raise BuildError("maturin produced no wukong_native wheel")
        wheel = str(wheels[-1])
    if "abi3" not in wheel and f"cp{PYTHON_VERSION.replace('.', '')}" not in wheel:
        raise BuildError(f"{wheel} is neither abi3 nor built for Python {PYTHON_VERSION}")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(target)


def glibc_needed(so: Path) -> tuple[int, ...]:
    """The newest ``GLIBC_x.y`` symbol version ``so`` needs."""
    out = subprocess.run(["objdump", "-T", str(so)], capture_output=True, text=True, check=True).stdout
    versions = [tuple(map(int, v.split("."))) for v in re.findall(r"GLIBC_(\d+(?:\.\d+)+)", out)]
    return max(versions, default=(0,))


def check_glibc(paths: list[Path]) -> None:
    too_new = []
    for so in paths:
        need = glibc_needed(so)
        if need > MAX_GLIBC:
            too_new.append(f"{so.name} needs GLIBC_{'.'.join(map(str, need))}")
    if too_new:
        raise BuildError(
            f"built against a glibc newer than the Lambda runtime's {'.'.join(map(str, MAX_GLIBC))}: "
            + "; ".join(too_new)
            + " -- build in a manylinux2014 / Amazon Linux 2023 container, or with "
            "`maturin build --zig --compatibility manylinux2014` for the Rust module"
        )


def tree_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def check_size(path: Path) -> int:
    size = tree_size(path)
    if size > MAX_UNZIPPED:
        biggest = sorted(((tree_size(p), p.name) for p in path.iterdir() if p.is_dir()), reverse=True)[:5]
        raise BuildError(
            f"unzipped size {size / 2**20:.1f} MB exceeds Lambda's 250 MB; largest: "
            + ", ".join(f"{n} {s / 2**20:.1f} MB" for s, n in biggest)
        )
    return size


def write_zip(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as z:
        for f in sorted(src.rglob("*")):
            if f.is_file():
                info = zipfile.ZipInfo.from_file(f, f.relative_to(src).as_posix())
                info.external_attr = (0o755 if os.access(f, os.X_OK) else 0o644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, f.read_bytes())


def build(arch: str, out: Path, python: str | None = None, native_wheel: str | None = None) -> Path:
    host = HOST_ARCH.get(platform.machine().lower(), platform.machine())
    if arch != host:
        raise BuildError(
            f"cannot build for {arch} on this {host} host: wukong's compiled extensions (the Rust module "
            f"wukong_native, the Cython wukong._core) are not cross-compiled; run this on an {arch} machine"
        )
    python = find_python312(python)
    with tempfile.TemporaryDirectory(prefix="wukong-build-") as tmp:
        work = Path(tmp)
        pkg = work / "package"
        pkg.mkdir()
        install_dependencies(pkg, arch)
        copy_package(pkg)
        build_core(pkg, python, work)
        build_native(pkg, work, native_wheel)
        ours = sorted((pkg / "wukong").rglob("*.so")) + sorted((pkg / "wukong_native").rglob("*.so"))
        if len(ours) < 4:
            raise BuildError(f"expected the three _core extensions and wukong_native, found {[p.name for p in ours]}")
        check_glibc(ours)
        size = check_size(pkg)
        dest = out / f"wukong-executor-{arch}.zip"
        write_zip(pkg, dest)
    print(f"{dest}: {dest.stat().st_size / 2**20:.1f} MB zipped, {size / 2**20:.1f} MB unzipped", flush=True)
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build the wukong executor's Lambda zip.")
    p.add_argument("--arch", choices=sorted(PLATFORMS), default="x86_64")
    p.add_argument("--out", type=Path, default=ROOT / "dist")
    p.add_argument("--python", help=f"a Python {PYTHON_VERSION} to compile the Cython extensions with")
    p.add_argument("--native-wheel", help="an already built wukong_native abi3 wheel (skips maturin)")
    args = p.parse_args(argv)
    try:
        build(args.arch, args.out, args.python, args.native_wheel)
    except BuildError as e:
        print(f"build.py: error: {e}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:
        print(f"build.py: error: {' '.join(map(str, e.cmd))} failed (exit code {e.returncode})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
