"""Build MinkowskiEngine 0.5.4 against the installed torch, cache the wheel, install it.

Usage: ``python scripts/install_minkowski.py [--device auto|cpu|cuda] [--rebuild]`` with the
Python of the environment to install into (e.g. ``.venv/bin/python``).

MinkowskiEngine 0.5.4 is source-only and does not install with a plain ``pip install``: its
setup.py imports torch (so no build isolation), its BLAS auto-detection crashes (so
``--blas=openblas``), and it needs ``--cpu_only`` without CUDA. This script fetches the sdist
with pip, builds a wheel with ``setup.py bdist_wheel`` and keeps it in
``${XDG_CACHE_HOME:-~/.cache}/tune_distill/wheels/minkowskiengine-0.5.4-torch<ver>-<cpu|cuXY>-cp<py>/``,
so a second install (another venv, a CI rerun with the cache) takes seconds. The Python >= 3.10
import problem is fixed at run time by ``tune_distill.sparse.minkowski``, not by patching files.

Standard library only. Expected failures print one line starting with "error:" and exit 1.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.5.4"
PY = sys.executable

# Run in a subprocess so that a broken torch or MinkowskiEngine is a message, not a traceback.
TORCH_INFO = """
import json, torch
print(json.dumps({"version": torch.__version__, "cuda": torch.version.cuda,
                  "cuda_available": torch.cuda.is_available()}))
"""
SMOKE_TEST = """
import collections, collections.abc, warnings
for name in ("Sequence", "Mapping", "MutableMapping", "Iterable", "Callable"):
    setattr(collections, name, getattr(collections.abc, name))
warnings.simplefilter("ignore")
import torch, MinkowskiEngine as ME
assert ME.__version__ == "%s", ME.__version__
x = ME.SparseTensor(torch.ones(2, 1), coordinates=torch.IntTensor([[0, 0, 0], [0, 0, 1]]))
conv = ME.MinkowskiConvolution(1, 2, kernel_size=3, dimension=2)
conv(x).F.sum().backward()
""" % VERSION


class Failure(Exception):
    """An expected failure: its message is printed as one line."""


def log(msg: str) -> None:
    print(f"install_minkowski: {msg}", flush=True)


def run(cmd: list[str], log_file: Path | None = None, **kw) -> subprocess.CompletedProcess:
    if log_file is None:
        return subprocess.run(cmd, capture_output=True, text=True, **kw)
    with open(log_file, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, text=True, **kw)


def torch_info() -> dict:
    out = run([PY, "-c", TORCH_INFO])
    if out.returncode != 0:
        raise Failure(f"torch does not import in {PY}; install torch first (see scripts/setup.sh)")
    return json.loads(out.stdout.strip().splitlines()[-1])


def nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and Path(home, "bin", "nvcc").exists():
        return str(Path(home, "bin", "nvcc"))
    return shutil.which("nvcc")


def nvcc_version(path: str) -> tuple[int, int]:
    text = run([path, "--version"]).stdout  # "... release 12.1, V12.1.105"
    major, minor = text.split("release ")[-1].split(",")[0].split(".")[:2]
    return int(major), int(minor)


def choose_device(requested: str, info: dict) -> str:
    """'cpu' or 'cuXY' (torch's CUDA version). auto builds CUDA only where it can work: CUDA torch,
    a visible GPU and CUDA < 12."""
    if requested == "cpu":
        return "cpu"
    compiler = nvcc()
    usable = info["cuda"] is not None and info["cuda_available"] and compiler is not None
    if requested == "cuda" and not usable:
        raise Failure("--device cuda needs a CUDA build of torch, a visible GPU and nvcc (CUDA_HOME or PATH)")
    if not usable:
        return "cpu"
    major = max(nvcc_version(compiler)[0], int(info["cuda"].split(".")[0]))
    if requested == "auto" and major >= 12:
        log(f"CUDA {info['cuda']}: MinkowskiEngine {VERSION}'s CUDA code does not compile with CUDA >= 12 "
            "without unreleased upstream fixes; building CPU-only (pass --device cuda to try anyway)")
        return "cpu"
    return "cu" + "".join(info["cuda"].split(".")[:2])


def cache_dir(info: dict, device: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    torch_version = info["version"].split("+")[0]
    py = f"cp{sys.version_info.major}{sys.version_info.minor}"
    return base / "tune_distill" / "wheels" / f"minkowskiengine-{VERSION}-torch{torch_version}-{device}-{py}"


def works() -> bool:
    return run([PY, "-c", SMOKE_TEST]).returncode == 0


def have_openblas(workdir: Path) -> bool:
    """Can the C++ compiler include cblas.h and link -lopenblas (what setup.py --blas=openblas needs)?"""
    src = workdir / "blas_check.cpp"
    src.write_text("#include <cblas.h>\nint main() { return 0; }\n")
    cxx = os.environ.get("CXX") or shutil.which("c++") or "g++"
    return run([cxx, str(src), "-lopenblas", "-o", str(workdir / "blas_check")]).returncode == 0


def ensure_build_tools(workdir: Path) -> None:
    if not (os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")):
        raise Failure("no C++ compiler found; install g++ (Debian/Ubuntu: apt-get install -y g++) and rerun")
    if not Path(sysconfig.get_paths()["include"], "Python.h").exists():
        raise Failure("Python.h not found; install the Python development headers (e.g. python3-dev) and rerun")
    if have_openblas(workdir):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log("installing libopenblas-dev with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "libopenblas-dev"]):
            if run(cmd, env=env).returncode != 0:
                raise Failure(f"'{' '.join(cmd)}' failed; install libopenblas-dev yourself and rerun")
        if have_openblas(workdir):
            return
    raise Failure("OpenBLAS headers/library not found; install libopenblas-dev (Debian/Ubuntu) "
                  "or openblas-devel (Fedora) and rerun")


def build(device: str, workdir: Path, log_file: Path) -> Path:
    """Fetch the sdist with pip, build the wheel; return its path."""
    # numpy.distutils (imported by setup.py while pip reads the metadata) needs the stdlib distutils.
    env = {**os.environ, "SETUPTOOLS_USE_DISTUTILS": "stdlib"}
    log("fetching the MinkowskiEngine sdist with pip")
    cmd = [PY, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
           f"MinkowskiEngine=={VERSION}", "-d", str(workdir)]
    if run(cmd, log_file, env=env).returncode != 0:
        raise Failure(f"pip could not fetch MinkowskiEngine=={VERSION} (offline? see {log_file})")
    archives = glob.glob(str(workdir / "MinkowskiEngine-*.tar.gz"))
    with tarfile.open(archives[0]) as tar:
        # The "data" filter (refuse links and paths outside workdir) exists from Python 3.11.4 on.
        tar.extractall(workdir, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    src = workdir / f"MinkowskiEngine-{VERSION}"

    # setup.py runs a bare `pip uninstall MinkowskiEngine -y`: point `pip` at this interpreter so it
    # cannot touch another environment (we reinstall right after anyway).
    shim = workdir / "bin"
    shim.mkdir()
    (shim / "pip").write_text(f'#!/bin/sh\nexec "{PY}" -m pip "$@"\n')
    (shim / "pip").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ.get('PATH', '')}",
           "MAX_JOBS": os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))}
    flags = ["--cpu_only"] if device == "cpu" else ["--force_cuda"]
    log(f"building MinkowskiEngine {VERSION} ({device}); this takes minutes, output in {log_file}")
    cmd = [PY, "setup.py", "bdist_wheel", *flags, "--blas=openblas"]
    if run(cmd, log_file, cwd=src, env=env).returncode != 0:
        raise Failure(f"the MinkowskiEngine build failed; compiler output in {log_file}")
    wheels = glob.glob(str(src / "dist" / "*.whl"))
    if not wheels:
        raise Failure(f"the build produced no wheel; see {log_file}")
    return Path(wheels[0])


def install(wheel: Path) -> None:
    # --no-deps: never let pip resolve torch (it would fetch a different build).
    out = run([PY, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--force-reinstall", str(wheel)])
    if out.returncode != 0:
        raise Failure(f"pip could not install {wheel}: {(out.stderr.strip().splitlines() or ['?'])[-1]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CUDA when torch has CUDA, a GPU is visible and nvcc < 12; else CPU")
    parser.add_argument("--rebuild", action="store_true", help="ignore the installed copy and the cached wheel")
    args = parser.parse_args(argv)
    try:
        info = torch_info()
        device = choose_device(args.device, info)
        cache = cache_dir(info, device)
        if not args.rebuild and works():
            log(f"MinkowskiEngine {VERSION} is already installed and works with torch {info['version']}")
            return 0
        cached = sorted(cache.glob("*.whl"))
        if cached and not args.rebuild:
            log(f"installing the cached wheel {cached[0]}")
            install(cached[0])
            if works():
                log("done")
                return 0
            log("the cached wheel does not work with this environment; rebuilding")
        with tempfile.TemporaryDirectory(prefix="minkowski-build-") as tmp:
            workdir = Path(tmp)
            ensure_build_tools(workdir)
            cache.mkdir(parents=True, exist_ok=True)
            log_file = cache / "build.log"
            log_file.write_text("")
            wheel = build(device, workdir, log_file)
            for old in cache.glob("*.whl"):
                old.unlink()
            kept = Path(shutil.copy2(wheel, cache / wheel.name))
        install(kept)
        if not works():
            raise Failure("MinkowskiEngine was built and installed but does not import; "
                          f"see {log_file} and run: {PY} -c 'import tune_distill.sparse.minkowski as m; print(m.import_error())'")
        log(f"done; wheel cached in {cache}")
        return 0
    except Failure as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
