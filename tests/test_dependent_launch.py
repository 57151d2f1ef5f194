"""The driver launcher's argument marshalling (CPU: no driver call is made): programmatic dependents and structs by
value (tensor maps). The launch itself — that a dependent runs early and that griddep_wait guards what it reads —
is test_cupy_kernels.py's test_dependent_launch_overlaps_and_waits, on the GPU."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from leetbench.cuda_kernels.dependent_launch import c_argument


def test_arguments_become_the_c_values_cupy_would_pass():
    cases = [(np.int32(-5), ctypes.c_int32, -5), (np.uint32(7), ctypes.c_uint32, 7),
             (np.int64(1 << 40), ctypes.c_int64, 1 << 40), (np.float32(0.5), ctypes.c_float, 0.5),
             (np.float64(0.25), ctypes.c_double, 0.25), (0x7F00_0000_1000, ctypes.c_uint64, 0x7F00_0000_1000)]
    for value, ctype, want in cases:
        got = c_argument(value)
        assert type(got) is ctype and got.value == want, (value, got)
    struct = bytes(range(128))  # a struct by value (a tensor map): its bytes, as they are
    got = c_argument(struct)
    assert ctypes.sizeof(got) == 128 and ctypes.string_at(ctypes.addressof(got), 128) == struct


@pytest.mark.parametrize("bad, words", [(np.float16(1), r"dtype float16 is not one of"),
                                        (True, r"expected a numpy scalar, a Python int .* or bytes"),
                                        (1.5, r"expected a numpy scalar, a Python int .* or bytes"),
                                        ("0x10", r"expected a numpy scalar, a Python int .* or bytes"),
                                        (bytearray(8), r"expected a numpy scalar, a Python int .* or bytes")])
def test_an_argument_it_cannot_pass_is_named(bad, words):
    with pytest.raises(TypeError, match=words):
        c_argument(bad)


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
                    args=[ctypes.cast(params[0], ctypes.POINTER(ctypes.c_uint64))[0],
                          ctypes.cast(params[1], ctypes.POINTER(ctypes.c_int32))[0],
                          ctypes.cast(params[2], ctypes.POINTER(ctypes.c_float))[0],
                          ctypes.string_at(params[3], 4)])
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
        with pytest.raises(ValueError, match=rf"chunked: overlap={bad!r}; valid: None \(where the device has it\), "
                                             r"True or False"):
            ops.chunked(None, None, None, None, scale=1.0, overlap=bad)
