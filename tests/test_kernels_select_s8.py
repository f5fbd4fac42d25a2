"""The int8 partial-update helpers (kernels/select_s8.h) against numpy: exact integer error
magnitudes on every row count, zero point and alignment (the word-at-a-time path and the
byte loop), top-k with ties to the lower index, and the compact gathers and scatters."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from kernel_lib import ptr
from mcutrain.reference.partial import s8_error_magnitudes, topk_indices

I = ctypes.c_int


def l1(kernels, x: np.ndarray, zero_point: int, offset: int = 0) -> np.ndarray:
    rows, channels = x.shape
    buf = np.zeros(x.size + 8, np.int8)  # aligned base, then the data at offset bytes
    buf[offset:offset + x.size] = x.ravel()
    mag = np.full(channels, -1, np.int32)
    kernels.mt_channel_l1_s8(ctypes.c_void_p(buf.ctypes.data + offset), I(rows), I(channels), I(zero_point),
                             ptr(mag))
    return mag


@pytest.mark.parametrize("rows", [1, 3, 255, 256, 257, 600])
@pytest.mark.parametrize("channels", [4, 8, 12, 32, 5])
def test_channel_l1_s8_is_exact_on_extreme_errors(kernels, rows, channels):
    rng = np.random.default_rng(rows * 100 + channels)
    x = rng.integers(-128, 128, (rows, channels)).astype(np.int8)
    x[: rows // 2, 0] = -128  # the lane's largest magnitude, over many rows (16-bit lanes)
    x[:, -1] = 127
    np.testing.assert_array_equal(l1(kernels, x, 0), s8_error_magnitudes(x))


@pytest.mark.parametrize("zero_point, offset", [(0, 1), (0, 2), (5, 0), (-128, 0), (127, 3)])
def test_channel_l1_s8_with_zero_points_and_unaligned_rows(kernels, zero_point, offset):
    rng = np.random.default_rng(9)
    x = rng.integers(-128, 128, (70, 8)).astype(np.int8)
    np.testing.assert_array_equal(l1(kernels, x, zero_point, offset), s8_error_magnitudes(x, zero_point))


def test_topk_indices_s32_ranks_like_numpy_with_ties_to_the_lower_index(kernels):
    rng = np.random.default_rng(4)
    for n, k in [(1, 1), (7, 3), (32, 3), (32, 32), (100, 10)]:
        mag = rng.integers(0, 6, n).astype(np.int32)  # many ties
        mag[0] = 2**31 - 1 if n > 2 else mag[0]
        idx = np.zeros(k, np.int32)
        taken = np.zeros(n, np.uint8)
        kernels.mt_topk_indices_s32(ptr(mag), I(n), I(k), ptr(idx), ptr(taken))
        np.testing.assert_array_equal(idx, topk_indices(mag, k))


def test_gather_and_scatter_round_trip(kernels):
    rng = np.random.default_rng(2)
    x = rng.integers(-128, 128, (6, 9)).astype(np.int8)
    idx = np.array([1, 4, 8], np.int32)
    out = np.zeros((6, 3), np.int8)
    kernels.mt_gather_columns_s8(ptr(x), I(6), I(9), ptr(idx), I(3), ptr(out))
    np.testing.assert_array_equal(out, x[:, idx])
    back = np.full((6, 9), 99, np.int8)
    kernels.mt_scatter_columns_s8(ptr(out), I(6), I(9), ptr(idx), I(3), ptr(back))
    expected = np.zeros_like(x)
    expected[:, idx] = x[:, idx]
    np.testing.assert_array_equal(back, expected)
    row_idx = np.array([0, 2, 5], np.int32)
    rows = np.zeros((3, 9), np.int8)
    kernels.mt_gather_rows(ptr(x), ctypes.c_size_t(9), ptr(row_idx), I(3), ptr(rows))
    np.testing.assert_array_equal(rows, x[row_idx])


@pytest.mark.parametrize("n, picks", [(10, [0, 1, 2, 5, 6]), (10, [3, 4, 8, 9]), (7, [6]), (5, [0, 1, 2, 3, 4]),
                                      (9, [1, 2, 3]), (12, [0, 4, 5, 6, 11])])
def test_rows_to_front_brings_the_selection_forward_and_back(kernels, n, picks):
    rng = np.random.default_rng(n)
    x = rng.integers(-128, 128, (n, 7)).astype(np.int8)
    y = x.copy()
    idx = np.array(picks, np.int32)
    kernels.mt_rows_to_front(ptr(y), ctypes.c_size_t(7), ptr(idx), I(len(picks)))
    np.testing.assert_array_equal(y[:len(picks)], x[idx])
    kernels.mt_rows_back(ptr(y), ctypes.c_size_t(7), ptr(idx), I(len(picks)))
    np.testing.assert_array_equal(y, x)
