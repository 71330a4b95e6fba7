"""CUDA 12's C++ front end on the kernel's device code, on a machine with CUDA 13 only.

NVRTC from the nvidia-cuda-nvrtc-cu12 wheel (CUDA 12's EDG front end and NVVM; no GPU needed)
compiles src/megakernel.cu to PTX for each architecture the project supports, as nvcc's device
pass would: C++17, -I src, the line info host/launcher.py asks for. Every kernel in the file is
generated: every build of qwen3_megakernel (named to NVRTC, since templates are only emitted
when instantiated) and the non-template kernels of bandwidth.cuh and prefill_ops.cuh. The
sources hide their host code from NVRTC with #ifndef __CUDACC_RTC__ (nvcc never defines it).
scripts/cuda12_check.sh runs this and assembles the PTX with CUDA 12's ptxas.

  python3 -m pip install --no-deps --target /tmp/cu12 nvidia-cuda-nvrtc-cu12==12.4.127
  python3 scripts/nvrtc12_check.py --target /tmp/cu12 --out /tmp/ptx       (or --nvrtc PATH/libnvrtc.so.12)

Writes OUT/megakernel.compute_XX.ptx per architecture; prints NVRTC's version, and its log on
a failure; exits non-zero if any architecture fails. Standard library only (ctypes).
"""
import argparse
import ctypes
import glob
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "src", "megakernel.cu")
# the builds of MkVariant (megakernel.cu)
KERNEL_INSTANCES = ["qwen3_megakernel<0>", "qwen3_megakernel<1>", "qwen3_megakernel<2>"]

# NVRTC 12.4 ships no C++ standard headers. The device code needs two things from them: the
# fixed-width integers and std::enable_if. These stand-ins supply exactly those, with glibc's
# LP64 types (64-bit ints are long), so that names and overloads resolve as under nvcc on Linux.
STDINT = """#pragma once
typedef signed char int8_t;
typedef short int16_t;
typedef int int32_t;
typedef long int64_t;
typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long uint64_t;
typedef long intptr_t;
typedef unsigned long uintptr_t;
"""
CSTDINT = """#pragma once
#include <stdint.h>
namespace std {
using ::int8_t; using ::int16_t; using ::int32_t; using ::int64_t;
using ::uint8_t; using ::uint16_t; using ::uint32_t; using ::uint64_t;
using ::intptr_t; using ::uintptr_t;
}
"""
TYPE_TRAITS = """#pragma once
namespace std {
template <bool B, class T = void> struct enable_if {};
template <class T> struct enable_if<true, T> { typedef T type; };
}
"""
STAND_INS = {"stdint.h": STDINT, "cstdint": CSTDINT, "type_traits": TYPE_TRAITS}

# Options beyond nvcc's, each for a difference between NVRTC and nvcc:
#  -default-device: NVRTC 12.4 takes a generic lambda (an `auto` parameter) inside device code
#    for a host function and refuses it; nvcc gives it the enclosing function's execution space.
#  INFINITY: under nvcc it comes from the host's math.h (cuda_runtime.h, included implicitly,
#    pulls it in); NVRTC has no math.h. The bit pattern of +inf, as CUDA's math_constants.h does.
NVRTC_ONLY_OPTIONS = ["-default-device", "-DINFINITY=__int_as_float(0x7f800000)"]


def makefile_archs() -> list:
    """The Makefile's ARCHS (sm_75 ...) as compute capabilities: one list for builds and checks."""
    with open(os.path.join(ROOT, "Makefile")) as f:
        for line in f:
            if line.startswith("ARCHS :="):
                return [a[len("sm_"):] for a in line.split(":=", 1)[1].split()]
    raise RuntimeError("no `ARCHS :=` line in the Makefile")


def load_nvrtc(path: str) -> ctypes.CDLL:
    # libnvrtc loads libnvrtc-builtins at compile time by soname; loading the one beside it
    # first makes that work wherever the library lies (the wheel's also has RUNPATH $ORIGIN).
    builtins = sorted(glob.glob(os.path.join(os.path.dirname(path), "libnvrtc-builtins.so*")))
    if builtins:
        ctypes.CDLL(builtins[0], mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(path)
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    return lib


def check(lib: ctypes.CDLL, result: int, what: str) -> None:
    if result != 0:
        raise RuntimeError(f"{what}: {lib.nvrtcGetErrorString(result).decode()}")


def nvrtc_version(lib: ctypes.CDLL) -> str:
    major, minor = ctypes.c_int(), ctypes.c_int()
    check(lib, lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return f"{major.value}.{minor.value}"


def read_string(lib: ctypes.CDLL, prog: ctypes.c_void_p, size_fn, get_fn) -> str:
    size = ctypes.c_size_t()
    check(lib, size_fn(prog, ctypes.byref(size)), size_fn.__name__)
    buf = ctypes.create_string_buffer(size.value)
    check(lib, get_fn(prog, buf), get_fn.__name__)
    return buf.value.decode(errors="replace")


def compile_ptx(lib: ctypes.CDLL, source: str, options: list) -> tuple:
    """Returns (ptx or None, log, {name expression: lowered name})."""
    names = list(STAND_INS)
    headers = (ctypes.c_char_p * len(names))(*[STAND_INS[n].encode() for n in names])
    include_names = (ctypes.c_char_p * len(names))(*[n.encode() for n in names])
    prog = ctypes.c_void_p()
    check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), SOURCE.encode(), len(names), headers,
                                      include_names), "nvrtcCreateProgram")
    try:
        for expr in KERNEL_INSTANCES:  # instantiates the template and keeps its kernel
            check(lib, lib.nvrtcAddNameExpression(prog, expr.encode()), "nvrtcAddNameExpression")
        opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        result = lib.nvrtcCompileProgram(prog, len(options), opts)
        log = read_string(lib, prog, lib.nvrtcGetProgramLogSize, lib.nvrtcGetProgramLog)
        if result != 0:
            return None, f"nvrtcCompileProgram: {lib.nvrtcGetErrorString(result).decode()}\n{log}", {}
        lowered = {}
        for expr in KERNEL_INSTANCES:
            name = ctypes.c_char_p()
            check(lib, lib.nvrtcGetLoweredName(prog, expr.encode(), ctypes.byref(name)), "nvrtcGetLoweredName")
            lowered[expr] = name.value.decode()
        return read_string(lib, prog, lib.nvrtcGetPTXSize, lib.nvrtcGetPTX), log, lowered
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", help="a `pip install --target` folder holding nvidia-cuda-nvrtc-cu12")
    ap.add_argument("--nvrtc", help="path of libnvrtc.so.12 (instead of --target)")
    ap.add_argument("--out", required=True, help="folder for the PTX files")
    ap.add_argument("--arch", nargs="+", default=makefile_archs(),
                    help="compute capabilities, e.g. 80 90 (default: the Makefile's ARCHS)")
    ap.add_argument("-I", dest="includes", action="append", default=[],
                    help="include folder searched before src/ (a generated_layout.h for another model)")
    ap.add_argument("-D", dest="defines", action="append", default=[], help="macro, as nvcc -D (e.g. MK_EXP=4)")
    args = ap.parse_args()
    path = args.nvrtc or (args.target and os.path.join(args.target, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so.12"))
    if not path or not os.path.exists(path):
        print(f"nvrtc12_check: libnvrtc.so.12 not found ({path or 'give --target or --nvrtc'})", file=sys.stderr)
        return 2
    lib = load_nvrtc(path)
    print(f"NVRTC {nvrtc_version(lib)} ({path})")

    with open(SOURCE) as f:
        source = f.read()
    # host/launcher.py's NVCC_FLAGS that concern device code: -std=c++17 -lineinfo (-O3 is the
    # host compiler's; NVVM optimizes by default). Include order as the launcher's.
    common = ["-std=c++17", "-lineinfo", *[f"-I{d}" for d in args.includes], f"-I{os.path.join(ROOT, 'src')}",
              *[f"-D{d}" for d in args.defines], *NVRTC_ONLY_OPTIONS]
    os.makedirs(args.out, exist_ok=True)
    failed = []
    for arch in args.arch:
        ptx, log, lowered = compile_ptx(lib, source, [f"--gpu-architecture=compute_{arch}", *common])
        missing = [e for e, n in lowered.items() if ptx and f".entry {n}(" not in ptx]
        if ptx is None or missing:
            failed.append(arch)
            print(f"compute_{arch}: FAILED" + (f" (no kernel for {', '.join(missing)})" if missing else ""))
            print(log.rstrip())
            continue
        out = os.path.join(args.out, f"megakernel.compute_{arch}.ptx")
        with open(out, "w") as f:
            f.write(ptx)
        print(f"compute_{arch}: {ptx.count('.entry ')} kernels, {len(ptx)} bytes of PTX -> {out}")
        if log.strip():  # warnings
            print(log.rstrip())
    if failed:
        print(f"nvrtc12_check: FAILED for compute_{', compute_'.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
