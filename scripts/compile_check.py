"""Compile leetbench's CUDA kernels without a GPU: NVRTC (through ctypes) to a cubin, then `cuobjdump
-res-usage` for registers, spills and shared memory per instance, and optionally the SASS.

NVRTC needs no device, so template errors, register counts and spills of a target (sm_90a by default) show
up on a CPU machine. Needs libnvrtc and cuobjdump, e.g. `pip install nvidia-cuda-nvrtc
nvidia-cuda-cuobjdump` into any environment, then point --cuda at that package's folder (…/nvidia/cu13).

    python scripts/compile_check.py --cuda /tmp/nv/lib/python3.11/site-packages/nvidia/cu13 \\
        "chunk_wg<128,64,2,3,true,1>" "chunk_wg<128,32,4,2,true,2>" [--sass] [--define LB_TIMELINE=0]
"""

from __future__ import annotations

import argparse
import ctypes
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from leetbench.cuda_kernels import compile_options, source, target_arch  # noqa: E402
from leetbench.cuda_kernels.ops import kernel_files  # noqa: E402


def _check(nvrtc, rc: int, prog, what: str) -> None:
    if rc != 0:
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(prog, log)
        raise SystemExit(f"{what} failed ({rc}):\n{log.value.decode()}")


def compile_cubin(nvrtc, files: tuple[str, ...], names: list[str], arch: str,
                  defines: tuple[str, ...] = ()) -> bytes:
    prog = ctypes.c_void_p()
    src = source(*files).encode()
    _check(nvrtc, nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src, b"check.cu", 0, None, None), prog, "create")
    for n in names:
        _check(nvrtc, nvrtc.nvrtcAddNameExpression(prog, n.encode()), prog, f"name {n}")
    opts = [o.encode() for o in (*compile_options(defines), f"--gpu-architecture={arch}")]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    _check(nvrtc, nvrtc.nvrtcCompileProgram(prog, len(opts), arr), prog, "compile")
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(prog, log)
    if log.value.strip():
        print(log.value.decode())  # warnings (e.g. wgmma serialized by ptxas)
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetCUBINSize(prog, ctypes.byref(size))
    buf = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetCUBIN(prog, buf)
    return buf.raw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="+", help="template instances, e.g. 'chunk_wg<128,64,2,3,true,1>'")
    ap.add_argument("--cuda", required=True, help="folder with lib/libnvrtc.so* and bin/cuobjdump")
    ap.add_argument("--arch", default=None, help="target (default: the sources' own, else sm_90)")
    ap.add_argument("--sass", action="store_true", help="print the SASS too")
    ap.add_argument("--define", action="append", default=[], metavar="NAME[=VALUE]",
                    help="a macro for the compiler, as the kernels' `defines` (e.g. LB_TIMELINE=0); repeatable")
    args = ap.parse_args()
    cuda = Path(args.cuda)
    lib = next(iter(sorted((cuda / "lib").glob("libnvrtc.so*"))), None)
    if lib is None:
        raise SystemExit(f"no libnvrtc.so* under {cuda / 'lib'}")
    nvrtc = ctypes.CDLL(str(lib))
    groups: dict[tuple[str, ...], list[str]] = {}
    for n in args.names:
        groups.setdefault(kernel_files(n), []).append(n)
    for files, names in groups.items():
        arch = args.arch or target_arch(files) or "sm_90"
        cubin = compile_cubin(nvrtc, files, names, arch, tuple(args.define))
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(cubin)
            f.flush()
            tool = str(cuda / "bin" / "cuobjdump")
            print(subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout)
            if args.sass:
                print(subprocess.run([tool, "-sass", f.name], capture_output=True, text=True).stdout)


if __name__ == "__main__":
    main()
