"""Build the megakernel with nvcc (cached) and bind build/libmegakernel.so with ctypes.

    lib = load_library()            # compiles for this GPU on first use, then from cache
    lib.mk_create(...)              # the C API of src/megakernel.cu

The cache key is the hash of every source file, the target architecture, the nvcc version
and the flags, so an edited kernel or another GPU rebuilds, and nothing else does.
A model whose dimensions differ from Qwen3-0.6B gets its own generated_layout.h.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys

from . import MegakernelError
from .config import ModelConfig
from .fsutil import atomic_output, write_text_atomic

SRC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
NVCC_FLAGS = ["-O3", "-std=c++17", "-lineinfo", "-shared", "-Xcompiler", "-fPIC"]
MIN_CC = (7, 5)


class CudaError(MegakernelError):
    """An error reported by the CUDA runtime or the kernel, with CUDA's own message."""


def find_nvcc() -> str:
    for cand in (shutil.which("nvcc"), os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")):
        if cand and os.path.isfile(cand):
            return cand
    raise MegakernelError("nvcc not found; install the CUDA toolkit (or `pip install nvidia-cuda-nvcc`) "
                          "and put nvcc on PATH")


def detect_gpu() -> dict:
    """Name, compute capability, SMs and memory of GPU 0; a clear error without a usable one."""
    import torch
    if not torch.cuda.is_available():
        raise MegakernelError("no NVIDIA GPU visible to PyTorch; run on a machine with a CUDA GPU "
                              "(in Colab: Runtime > Change runtime type > GPU)")
    p = torch.cuda.get_device_properties(0)
    if (p.major, p.minor) < MIN_CC:
        raise MegakernelError(f"{p.name} has compute capability {p.major}.{p.minor}; the megakernel needs "
                              f"{MIN_CC[0]}.{MIN_CC[1]} or newer (T4, A100, H100, RTX 20xx and later)")
    return {"name": p.name, "cc": (p.major, p.minor), "sms": p.multi_processor_count,
            "memory_bytes": p.total_memory}


def _nvcc_version(nvcc: str) -> str:
    return subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]


def _source_files() -> list:
    return sorted(f for f in os.listdir(SRC_DIR) if f.endswith((".cu", ".cuh", ".h")))


def cache_dir() -> str:
    return os.environ.get("MEGAKERNEL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "megakernel"))


def build_library(arch: str | None = None, config: ModelConfig | None = None, gencode: str | None = None,
                  quiet: bool = False) -> str:
    """Compile src/megakernel.cu into a cached shared library; returns its path.

    arch: 'sm_90' etc. (default: this GPU's). gencode: a full -gencode value instead, e.g.
    'arch=compute_80,code=compute_80' for a PTX-only build. config: a model other than the
    one src/generated_layout.h was generated for.
    """
    from .layout import emit_c_header
    nvcc = find_nvcc()
    if arch is None and gencode is None:
        major, minor = detect_gpu()["cc"]
        arch = f"sm_{major}{minor}"
    target = ["-gencode=" + gencode] if gencode else [f"-arch={arch}"]
    header = emit_c_header(config) if config is not None else None
    h = hashlib.sha256()
    for f in _source_files():
        with open(os.path.join(SRC_DIR, f), "rb") as fh:
            h.update(f.encode() + fh.read())
    h.update(repr((target, NVCC_FLAGS, _nvcc_version(nvcc), header)).encode())
    out_dir = os.path.join(cache_dir(), h.hexdigest()[:16])
    lib = os.path.join(out_dir, "libmegakernel.so")
    if os.path.isfile(lib):
        return lib
    os.makedirs(out_dir, exist_ok=True)
    includes = []
    if header is not None:
        write_text_atomic(os.path.join(out_dir, "generated_layout.h"), header)
        includes.append("-I" + out_dir)
    includes.append("-I" + SRC_DIR)
    if not quiet:
        print(f"[megakernel] compiling for {gencode or arch} (once; cached in {out_dir})", file=sys.stderr)
    with atomic_output(lib, suffix=".so") as tmp:
        cmd = [nvcc, *NVCC_FLAGS, *target, *includes, "-o", tmp, os.path.join(SRC_DIR, "megakernel.cu")]
        r = _run_with_progress(cmd, quiet)
        if r.returncode != 0:
            raise MegakernelError(f"nvcc failed ({' '.join(cmd)}):\n{r.stderr[-4000:]}")
    return lib


def _run_with_progress(cmd: list, quiet: bool) -> subprocess.CompletedProcess:
    """Run nvcc; unless quiet, a progress bar of elapsed time (nvcc reports no progress itself)."""
    if quiet:
        return subprocess.run(cmd, capture_output=True, text=True)
    import threading
    from tqdm.auto import tqdm
    result = {}
    t = threading.Thread(target=lambda: result.update(r=subprocess.run(cmd, capture_output=True, text=True)))
    t.start()
    with tqdm(desc="nvcc", bar_format="{desc}: {elapsed} elapsed", file=sys.stderr) as bar:
        while t.is_alive():
            t.join(0.5)
            bar.update(0)
            bar.refresh()
    return result["r"]


ABI_VERSION = "megakernel-abi-4"  # src/megakernel.cu's kAbiVersion: the C API these signatures describe


class _Lib:
    """ctypes signatures of the C API in src/megakernel.cu."""

    def __init__(self, path: str):
        self.path = path
        L = self.dll = ctypes.CDLL(path)
        c_int_p = ctypes.POINTER(ctypes.c_int)
        sig = {
            "mk_abi_version": (ctypes.c_char_p, []),
            "mk_compiled_dims": (None, [c_int_p]),
            "mk_check_flat_file": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]),
            "mk_create": (ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                            ctypes.c_char_p, ctypes.c_int]),
            "mk_destroy": (None, [ctypes.c_void_p]),
            "mk_error": (ctypes.c_char_p, [ctypes.c_void_p]),
            "mk_info": (None, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_longlong)]),
            "mk_set_eos": (ctypes.c_int, [ctypes.c_void_p, c_int_p, ctypes.c_int]),
            "mk_set_sampling": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_float, ctypes.c_int, ctypes.c_float,
                                               ctypes.c_ulonglong, ctypes.c_ulonglong]),
            "mk_set_lm_only": (ctypes.c_int, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float)]),
            "mk_set_lm_q8": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),
            "mk_set_timeout_ms": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_double]),
            "mk_set_fault": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]),
            "mk_last_ms": (ctypes.c_float, [ctypes.c_void_p]),
            "mk_run": (ctypes.c_int, [ctypes.c_void_p, c_int_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                      ctypes.c_int, c_int_p, c_int_p, ctypes.c_int]),
            "mk_get_debug": (ctypes.c_int, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float),
                                            ctypes.POINTER(ctypes.c_float)]),
            "mk_device_buffers": (None, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_ulonglong)]),
            "mk_measure_read_bandwidth": (ctypes.c_double, [ctypes.c_double, ctypes.c_int]),
            "mk_bytes_per_token": (ctypes.c_double, [ctypes.c_void_p, ctypes.c_int]),
            # the bulk prefill's fused elementwise kernels (src/prefill_ops.cuh); pointers, stream last
            "mk_prefill_rmsnorm": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                                                  ctypes.c_float, ctypes.c_void_p]),
            "mk_prefill_qkv": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                                              ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                              ctypes.c_int, ctypes.c_float, ctypes.c_void_p]),
            "mk_prefill_silu_mul": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]),
        }
        for name, (res, args) in sig.items():
            fn = getattr(L, name)
            fn.restype, fn.argtypes = res, args
            setattr(self, name, fn)
        abi = self.mk_abi_version().decode()
        if abi != ABI_VERSION:
            raise MegakernelError(f"{path} has C API {abi}, this package needs {ABI_VERSION}; rebuild it "
                                  "(make lib, or delete the cached library)")

    def compiled_dims(self) -> list:
        out = (ctypes.c_int * 8)()
        self.mk_compiled_dims(out)
        return list(out)

    def check_flat_file(self, path: str) -> None:
        buf = ctypes.create_string_buffer(1024)
        if self.mk_check_flat_file(path.encode(), buf, len(buf)) != 0:
            raise MegakernelError(buf.value.decode())


_loaded: dict = {}


def load_library(path: str | None = None, **build_kwargs) -> _Lib:
    """The bound library: `path` as given, else built (or found in the cache) for this GPU."""
    path = path or build_library(**build_kwargs)
    if path not in _loaded:
        _loaded[path] = _Lib(path)
    return _loaded[path]
