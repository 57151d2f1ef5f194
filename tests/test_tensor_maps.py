"""The tensor maps chunk_wg2_tma's producer loads through (tensor_maps.py), on the CPU: what cuTensorMapEncodeTiled is
handed, read back from a stand-in for the driver, and the inputs a map cannot take, named. That the kernel's loads
through them equal the plain producer's copies bit for bit is test_cupy_kernels.py's test_tma_loads_equal_cp_async_ones,
on the GPU."""

from __future__ import annotations

import ctypes

import pytest
import torch

from leetbench.cuda_kernels import tensor_maps


@pytest.fixture
def encoder(monkeypatch):
    """A stand-in for cuTensorMapEncodeTiled: records its arguments and writes 128 recognisable bytes."""
    seen: dict = {}

    def encode(out, dtype, rank, address, dims, strides, box, steps, interleave, swizzle, l2, oob):
        seen.update(aligned=out % 64 == 0, dtype=dtype, rank=rank, address=address, dims=list(dims[:rank]),
                    strides=list(strides[:rank - 1]), box=list(box[:rank]), steps=list(steps[:rank]),
                    modes=(interleave, swizzle, l2, oob))
        ctypes.memmove(out, bytes(range(7, 135)), 128)
        return seen.get("rc", 0)

    monkeypatch.setattr(tensor_maps, "_encoder", lambda: encode)
    tensor_maps._encoded.cache_clear()  # maps encoded before (by another test's stand-in) are not this one's
    yield seen
    tensor_maps._encoded.cache_clear()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_map_is_three_dimensions_of_boxes_of_64_tokens_by_64_columns(encoder, dtype):
    t = torch.zeros(2, 3, 100, 128, dtype=dtype)
    got = tensor_maps.token_map(t)
    assert got == bytes(range(7, 135))
    assert encoder == {"aligned": True, "dtype": 1, "rank": 3, "address": t.data_ptr(), "dims": [128, 100, 6],
                       "strides": [256, 100 * 256], "box": [64, 64, 1], "steps": [1, 1, 1],
                       "modes": (0, 3, 3, 0)}  # no interleave, 128-byte swizzle, 256-byte L2 promotion, zeros


@pytest.mark.parametrize("t, words", [
    (torch.zeros(2, 3, 100, 128), r"contiguous \[B, H, N, C\] 16-bit tensor \(got \(2, 3, 100, 128\), torch.float32"),
    (torch.zeros(2, 3, 128, 100, dtype=torch.bfloat16).transpose(2, 3), r"contiguous=False"),
    (torch.zeros(3, 100, 128, dtype=torch.bfloat16), r"got \(3, 100, 128\)"),
    (torch.zeros(1, 1, 64, 96, dtype=torch.float16), r"boxes are 64 columns: C=96 is not a multiple of 64"),
])
def test_a_tensor_a_map_cannot_take_is_named(encoder, t, words):
    with pytest.raises(ValueError, match=words):
        tensor_maps.token_map(t)
    assert not encoder  # refused before the driver is asked


def test_a_map_the_driver_refuses_is_a_runtime_error(encoder):
    encoder["rc"] = 1
    with pytest.raises(RuntimeError, match=r"cuTensorMapEncodeTiled refused a map of 1 × 64 × 64 "
                                           r"torch.bfloat16: CUresult 1"):
        tensor_maps.token_map(torch.zeros(1, 1, 64, 64, dtype=torch.bfloat16))


def test_a_map_is_encoded_once_per_address_and_shape(encoder):
    """A timed loop calls with the same tensors: their maps come from the cache, the driver asked once per tensor;
    the same storage seen with another shape, or another tensor, is encoded afresh."""
    calls = []
    stand_in = tensor_maps._encoder()
    tensor_maps._encoder = lambda: lambda *args: calls.append(args[3]) or stand_in(*args)  # (monkeypatch undoes it)
    t, u = torch.zeros(2, 2, 64, 64, dtype=torch.bfloat16), torch.zeros(2, 2, 64, 64, dtype=torch.float16)
    first = tensor_maps.token_map(t)
    assert tensor_maps.token_map(t) == first and calls == [t.data_ptr()]
    tensor_maps.token_map(t.view(2, 2, 32, 128))
    tensor_maps.token_map(u)
    assert calls == [t.data_ptr(), t.data_ptr(), u.data_ptr()]
