"""CuPy ↔ torch bridge for leetbench's own CUDA kernels, and the kernels' sources.

Methods written as CuPy RawModules share memory with torch and run on torch's stream (DESIGN.md §3):

- tensors go to kernels as raw device pointers (`t.data_ptr()`): zero-copy, with no per-call DLPack
  round trip; `as_cupy` gives a zero-copy `cupy.ndarray` view (DLPack) where an array is wanted;
- every launch goes on torch's current stream (`cupy.cuda.ExternalStream`), so CUDA events recorded by the
  timing code bracket the kernel; `Kernel(..., dependent=True)` launches as a programmatic dependent of the
  kernel before it (dependent_launch.py);
- sources are `.cu` files beside this module (no headers: NVRTC on the GPU machine cannot include <mma.h> or
  <cuda_bf16.h>, so 16-bit values are raw bit patterns and conversions and matrix products are inline PTX);
  each template instance is compiled once per process and device (`kernel`), from a method's `setup=`, so
  compilation is never timed; CuPy keeps the machine code on disk for the next process, and for sources with
  an architecture-specific target (compiled here through NVRTC: wgmma needs sm_90a) `cubin_cache` does;
- outputs are allocated by torch; `use_torch_allocator` routes any CuPy allocation through torch's caching
  allocator so torch's peak-memory counter sees it.

CuPy is imported lazily: importing this module works on machines without CuPy or a GPU.
"""

from __future__ import annotations

import functools
import importlib.util
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from leetbench.cuda_kernels import cubin_cache
from leetbench.cuda_kernels.dependent_launch import launch as driver_launch

KERNEL_DIR = Path(__file__).resolve().parent
COMPILE_OPTIONS = ("-std=c++17",)
# Sources that use architecture-specific instructions (wgmma needs sm_90a, which CuPy's RawModule cannot
# name: it appends its own -arch=sm_XX), compiled through NVRTC directly for that target.
ARCH_SPECIFIC = {"chunked_wg.cu": "sm_90a", "chunked_wg32.cu": "sm_90a", "chunked_wg4.cu": "sm_90a",
                 "chunked_wglb.cu": "sm_90a"}
_DEFAULT_SMEM = 48 * 1024
_CU_FUNC_ATTRIBUTE_NUM_REGS = 4  # CUfunction_attribute values (cuda.h)
_CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8


def cupy_available() -> bool:
    """CuPy importable and a CUDA device visible to torch."""
    return importlib.util.find_spec("cupy") is not None and torch.cuda.is_available()


def _cupy():
    import cupy  # noqa: PLC0415 - optional dependency, imported on first use

    return cupy


@functools.lru_cache(maxsize=None)
def source(*files: str) -> str:
    """The concatenated text of kernel source files in this folder (`#pragma once` dropped)."""
    parts = [(KERNEL_DIR / f).read_text().replace("#pragma once", "") for f in files]
    return "\n".join(parts)


class Kernel:
    """One compiled template instance on one device: launches on torch's current stream."""

    def __init__(self, fn: Any, name: str, device_index: int, module: Any = None, log: str = ""):
        self.fn = fn
        self.module = module  # a module loaded here (not by CuPy) must outlive its functions
        self.log = log        # the compiler's messages (e.g. ptxas serialising wgmma), where compiled here
        self.name = name
        self.device_index = device_index
        self._smem_limit = _DEFAULT_SMEM

    @property
    def num_regs(self) -> int:
        if self.module is None:
            return int(self.fn.num_regs)
        from cupy_backends.cuda.api import driver  # noqa: PLC0415 - optional dependency

        return int(driver.funcGetAttribute(_CU_FUNC_ATTRIBUTE_NUM_REGS, self.fn.ptr))

    def _allow_smem(self, nbytes: int) -> None:
        if self.module is None:
            self.fn.max_dynamic_shared_size_bytes = nbytes
            return
        from cupy_backends.cuda.api import driver  # noqa: PLC0415

        driver.funcSetAttribute(self.fn.ptr, _CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, nbytes)

    @property
    def handle(self) -> int:
        """The CUfunction (CuPy's RawKernel holds it in `.kernel`)."""
        return int(self.fn.ptr if self.module is not None else self.fn.kernel.ptr)

    def __call__(self, grid: int | tuple, block: int | tuple, args: tuple, shared_mem: int = 0,
                 dependent: bool = False) -> None:
        """Launch on torch's current stream; `dependent`: as a programmatic dependent of the kernel before it there
        (dependent_launch; the kernel's own griddepcontrol.wait guards what it reads of that kernel's outputs).
        Through the driver where dependent or an argument is a struct by value (`bytes`: a tensor map), else
        through CuPy's launcher."""
        cp = _cupy()
        if shared_mem > self._smem_limit:
            with cp.cuda.Device(self.device_index):
                self._allow_smem(int(shared_mem))
            self._smem_limit = shared_mem
        grid = grid if isinstance(grid, tuple) else (int(grid),)
        block = block if isinstance(block, tuple) else (int(block),)
        stream = torch_stream(self.device_index)

        def launch() -> None:
            if dependent or any(type(a) is bytes for a in args):
                driver_launch(self.handle, grid, block, args, int(shared_mem), int(stream.ptr), dependent)
            else:
                self.fn(grid, block, args, shared_mem=shared_mem, stream=stream)

        if cp.cuda.runtime.getDevice() != self.device_index:
            with cp.cuda.Device(self.device_index):
                launch()
        else:
            launch()


_kernels: dict[tuple[tuple[str, ...], str, int, tuple[str, ...]], Kernel] = {}


def precompile(files: tuple[str, ...], names: Sequence[str], device_index: int, jobs: int = 1,
               defines: tuple[str, ...] = ()) -> None:
    """Compile the missing template instances `names` of one source: one NVRTC call per group of names,
    `jobs` groups in threads at once (CuPy releases the GIL while NVRTC compiles). defines: macros for the
    compiler (`-D` each, e.g. "LB_TIMELINE=0" for scripts/timeline.py); a build with them is another kernel."""
    missing = [n for n in dict.fromkeys(names) if (files, n, device_index, defines) not in _kernels]
    if not missing:
        return
    jobs = max(1, min(jobs, len(missing)))
    groups = [missing[i::jobs] for i in range(jobs)]
    if len(groups) == 1:
        _compile_group(files, groups[0], device_index, defines)
        return
    try:
        with ThreadPoolExecutor(len(groups)) as pool:
            list(pool.map(lambda g: _compile_group(files, g, device_index, defines), groups))
    except Exception:  # noqa: BLE001 - threads are only a speed-up: one call, in order, says what is wrong
        _compile_group(files, [n for n in missing if (files, n, device_index, defines) not in _kernels],
                       device_index, defines)


def target_arch(files: tuple[str, ...]) -> str | None:
    """The architecture-specific target a source set needs (e.g. 'sm_90a'), or None for CuPy's default."""
    archs = {ARCH_SPECIFIC[f] for f in files if f in ARCH_SPECIFIC}
    if len(archs) > 1:
        raise ValueError(f"kernel sources {files} need different targets: {sorted(archs)}")
    return archs.pop() if archs else None


def compile_options(defines: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The compiler options of every kernel, with `defines` as -D macros."""
    return (*COMPILE_OPTIONS, *(f"-D{d}" for d in defines))


def _compile_group(files: tuple[str, ...], names: list[str], device_index: int, defines: tuple[str, ...]) -> None:
    arch = target_arch(files)
    if arch is not None:
        _compile_group_for(files, names, device_index, arch, defines)
        return
    cp = _cupy()
    with cp.cuda.Device(device_index):
        module = cp.RawModule(code=source(*files), options=compile_options(defines), name_expressions=names)
        for name in names:
            fn = module.get_function(name)
            fn.compile()
            _kernels[(files, name, device_index, defines)] = Kernel(fn, name, device_index)


def _compile_group_for(files: tuple[str, ...], names: list[str], device_index: int, arch: str,
                       defines: tuple[str, ...]) -> None:
    """NVRTC for one named target (cubin; kept in cubin_cache for later processes), loaded on the device."""
    cp = _cupy()
    from cupy.cuda import function  # noqa: PLC0415 - optional dependency
    from cupy_backends.cuda.libs import nvrtc  # noqa: PLC0415

    options = (*compile_options(defines), f"--gpu-architecture={arch}")
    src = source(*files)

    def compile_now(missing: list[str]) -> cubin_cache.Compiled:
        prog = nvrtc.createProgram(src, "leetbench_" + "_".join(f.split(".")[0] for f in files) + ".cu", (), ())
        try:
            for name in missing:
                nvrtc.addNameExpression(prog, name)
            try:
                nvrtc.compileProgram(prog, options)
            except nvrtc.NVRTCError as exc:
                raise RuntimeError(f"NVRTC for {arch} failed on {files}:\n{nvrtc.getProgramLog(prog)}") from exc
            return cubin_cache.Compiled(cubin=nvrtc.getCUBIN(prog), log=nvrtc.getProgramLog(prog),
                                        lowered={name: nvrtc.getLoweredName(prog, name) for name in missing})
        finally:
            nvrtc.destroyProgram(prog)

    toolchain = "nvrtc {}.{}".format(*nvrtc.getVersion())
    built = cubin_cache.compile_cached(src, names, options, arch, toolchain, compile_now)
    with cp.cuda.Device(device_index):
        modules: dict[int, Any] = {}  # one module per cubin (a compiler run holds several names)
        for name in names:
            c = built[name]
            if id(c) not in modules:
                modules[id(c)] = function.Module()
                modules[id(c)].load(c.cubin)
            module = modules[id(c)]
            _kernels[(files, name, device_index, defines)] = Kernel(module.get_function(c.lowered[name]), name,
                                                                    device_index, module, c.log)


def kernel(files: tuple[str, ...], name: str, device_index: int, defines: tuple[str, ...] = ()) -> Kernel:
    """The compiled kernel `name` (a C++ name expression, e.g. 'decode_step<2,4,false>'), cached; `defines`
    as precompile's."""
    key = (files, name, device_index, defines)
    k = _kernels.get(key)
    if k is None:
        precompile(files, [name], device_index, defines=defines)
        k = _kernels[key]
    return k


_streams: dict[int, Any] = {}


def torch_stream(device_index: int):
    """torch's current stream on a device, as a CuPy stream object (cached by handle)."""
    handle = torch.cuda.current_stream(device_index).cuda_stream
    stream = _streams.get(handle)
    if stream is None:
        stream = _cupy().cuda.ExternalStream(handle, device_index)
        _streams[handle] = stream
    return stream


@dataclass(frozen=True)
class Limits:
    """What a launch plan needs to know about a device, read from the device (not assumed)."""

    sm_count: int
    smem_block: int     # largest dynamic shared memory a block may opt in to (bytes)
    smem_sm: int        # shared memory per SM (bytes)
    smem_reserved: int  # shared memory the system reserves per block (bytes)

    def blocks_fit(self, smem: int, per_sm: int) -> bool:
        """Whether `per_sm` blocks of `smem` dynamic shared memory each fit one SM (and one fits a block)."""
        return smem <= self.smem_block and per_sm * (smem + self.smem_reserved) <= self.smem_sm


@functools.lru_cache(maxsize=None)
def device_limits(device_index: int) -> Limits:
    """SM count and shared-memory limits of a device, from CUDA's device properties (through CuPy)."""
    props = _cupy().cuda.runtime.getDeviceProperties(device_index)
    # reservedSharedMemPerBlock is reported from CUDA 11 on; torch's properties do not carry it
    return Limits(sm_count=int(props["multiProcessorCount"]), smem_block=int(props["sharedMemPerBlockOptin"]),
                  smem_sm=int(props["sharedMemPerMultiprocessor"]),
                  smem_reserved=int(props.get("reservedSharedMemPerBlock", 0)))


def as_cupy(t: torch.Tensor):
    """A zero-copy CuPy view of a CUDA tensor (DLPack)."""
    return _cupy().from_dlpack(t.detach())


class _TorchBlock:
    """Owner of one block from torch's caching allocator; returns it when CuPy drops the memory."""

    __slots__ = ("ptr",)

    def __init__(self, ptr: int):
        self.ptr = ptr

    def __del__(self):
        torch.cuda.caching_allocator_delete(self.ptr)


@functools.lru_cache(maxsize=1)
def use_torch_allocator() -> None:
    """Route CuPy's device allocations through torch's caching allocator (so peak memory counts them)."""
    cp = _cupy()

    def alloc(size: int):
        if size == 0:
            return cp.cuda.MemoryPointer(cp.cuda.UnownedMemory(0, 0, None), 0)
        dev = cp.cuda.runtime.getDevice()
        ptr = torch.cuda.caching_allocator_alloc(size, dev, torch.cuda.current_stream(dev))
        return cp.cuda.MemoryPointer(cp.cuda.UnownedMemory(ptr, size, _TorchBlock(ptr), dev), 0)

    cp.cuda.set_allocator(alloc)
