"""The driver launcher's argument marshalling (CPU: no driver call is made): programmatic dependents and structs by
value (tensor maps). The launch itself — that a dependent runs early and that griddep_wait guards what it reads —
is test_cupy_kernels.py's test_dependent_launch_overlaps_and_waits, on the GPU."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from leetbench.cuda_kernels.dependent_launch import packed_params, param_layout


def _values(params) -> "ctypes._Pointer":
    """The table of pointers at the start of a packed parameter buffer (`void **kernelParams`): entry i is the
    address of parameter i's value."""
    return ctypes.cast(params, ctypes.POINTER(ctypes.c_uint64))


def test_arguments_lie_where_the_kernels_parameter_space_has_them():
    """Each argument packed as the C value CuPy's launcher would pass (numpy scalars by their dtype, a Python int as
    64 bits, bytes as they are), at its C alignment after the ones before it (a struct at 64 bytes), and the table
    before them points at each."""
    args = (0x7F00_0000_1000, np.int32(-5), np.float32(0.5), np.uint32(7), np.int64(1 << 40), np.float64(0.25),
            np.int32(9), bytes(range(128)), np.uint64(3))
    params = packed_params(args)
    layout = param_layout(tuple(map(type, args)), (128,))
    table = _values(params)
    base = ctypes.addressof(params)
    assert [table[i] - base for i in range(len(args))] == list(layout.offsets)
    rel = [o - layout.offsets[0] for o in layout.offsets]
    assert rel == [0, 8, 12, 16, 24, 32, 40, 64, 192]  # int32 after a pointer at 8, int64 at 24, the struct at 64
    assert layout.offsets[0] % 64 == 0
    at = [table[i] for i in range(len(args))]
    read = [ctypes.c_uint64.from_address(at[0]).value, ctypes.c_int32.from_address(at[1]).value,
            ctypes.c_float.from_address(at[2]).value, ctypes.c_uint32.from_address(at[3]).value,
            ctypes.c_int64.from_address(at[4]).value, ctypes.c_double.from_address(at[5]).value,
            ctypes.c_int32.from_address(at[6]).value, ctypes.string_at(at[7], 128),
            ctypes.c_uint64.from_address(at[8]).value]
    assert read == [0x7F00_0000_1000, -5, 0.5, 7, 1 << 40, 0.25, 9, bytes(range(128)), 3]
    two = packed_params((np.int32(1), b"\x05" * 128, b"\x06" * 64))  # structs of two sizes, each where it belongs
    assert ctypes.string_at(_values(two)[2], 64) == b"\x06" * 64 and _values(two)[2] - _values(two)[1] == 128


@pytest.mark.parametrize("bad, words", [(np.float16(1), r"kernel argument 1: dtype float16 is not one of"),
                                        (True, r"kernel argument 1: bool; expected a numpy scalar, a Python int"),
                                        (1.5, r"kernel argument 1: float; expected .* or bytes \(a struct by value\)"),
                                        ("0x10", r"kernel argument 1: str; expected"),
                                        (bytearray(8), r"kernel argument 1: bytearray; expected")])
def test_an_argument_it_cannot_pass_is_named(bad, words):
    with pytest.raises(TypeError, match=words):
        packed_params((np.int32(0), bad))


def test_the_driver_gets_the_launch_as_cuda_h_lays_it_out(monkeypatch):
    """launch hands cuLaunchKernelEx a CUlaunchConfig (grid, block, shared memory, stream; as a dependent one
    attribute, programmatic stream serialization allowed, else none) and a pointer per argument to its C value —
    read back here from a stand-in for the driver; a refused launch is a RuntimeError naming the driver's code."""
    from leetbench.cuda_kernels import dependent_launch as dl

    seen = {}

    def driver(config, function, params, extra):
        c = config._obj
        attr = (c.attrs[0].id, c.attrs[0].value[0]) if c.num_attrs else bool(c.attrs)
        seen.update(grid=list(c.grid), block=list(c.block), smem=c.shared_mem, stream=c.stream, n=c.num_attrs,
                    attr=attr, function=function, extra=extra,
                    args=[ctypes.c_uint64.from_address(_values(params)[0]).value,
                          ctypes.c_int32.from_address(_values(params)[1]).value,
                          ctypes.c_float.from_address(_values(params)[2]).value,
                          ctypes.string_at(_values(params)[3], 4)])
        return seen.get("rc", 0)

    monkeypatch.setattr(dl, "_driver", lambda: driver)
    args = (0x7F00_0000_1000, np.int32(-3), np.float32(0.5), b"" + bytes(124))
    dl.launch(0xABC, (128,), (384, 1), args, 4096, 77, True)
    assert seen == {"grid": [128, 1, 1], "block": [384, 1, 1], "smem": 4096, "stream": 77, "n": 1, "attr": (6, 1),
                    "function": 0xABC, "extra": None, "args": [0x7F00_0000_1000, -3, 0.5, b"\x01\x02\x03\x04"]}
    dl.launch(0xABC, (128,), (384, 1), args, 4096, 77, False)  # an ordinary launch: no attribute
    assert (seen["n"], seen["attr"]) == (0, False)
    seen["rc"] = 1
    with pytest.raises(RuntimeError, match=r"cuLaunchKernelEx \(programmatic dependent launch\) failed: CUresult 1"):
        dl.launch(0xABC, (1,), (32,), args, 0, 0, True)
    with pytest.raises(RuntimeError, match=r"cuLaunchKernelEx \(launch\) failed: CUresult 1"):
        dl.launch(0xABC, (1,), (32,), args, 0, 0, False)


def test_chunked_names_an_overlap_it_cannot_take():
    """ops.chunked(overlap=…) takes None, True or False; anything else is a one-line ValueError naming it (before
    any tensor is looked at)."""
    from leetbench.cuda_kernels import ops

    for bad in ("yes", 2, "auto"):
        with pytest.raises(ValueError, match=rf"chunked: overlap={bad!r}; valid: None \(ops.default_overlap\), "
                                             r"True or False"):
            ops.chunked(None, None, None, None, scale=1.0, overlap=bad)
