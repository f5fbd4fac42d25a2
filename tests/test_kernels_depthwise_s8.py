"""int8 depthwise Conv2d kernels (depthwise_s8.c, host build: the portable C) against the
integer numpy reference, bit for bit: shapes that stress the channel planes (channel counts
not a multiple of the 4-channel group, strides, paddings, kernels wider than the image,
batches, bands of rows) and extreme zero points and weights. The Cortex-M4 path runs the
same shapes on the boards in test_depthwise_s8_device.py.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from kernel_lib import ptr
from mcutrain.reference import quantized as Q
from test_kernels_s8 import (  # noqa: F401  (lib is a fixture)
    UPDATES,
    Conv2dParams,
    Guarded,
    Range,
    S8Update,
    assert_update_matches,
    c_float,
    lib,
    quant,
    run_conv_update,
    s8,
)

# (batch, in_h, in_w, channels, kernel (h, w), stride (h, w), padding (h, w))
DW_CASES = {
    "c1_3x3_pad1": (1, 5, 6, 1, (3, 3), (1, 1), (1, 1)),
    "c3_3x3_stride2_pad1_batch3": (3, 7, 8, 3, (3, 3), (2, 2), (1, 1)),
    "c5_5x3_pad2x1": (1, 9, 6, 5, (5, 3), (1, 1), (2, 1)),
    "c7_1x1": (2, 4, 5, 7, (1, 1), (1, 1), (0, 0)),
    "c7_1x1_stride2_pad1": (1, 5, 5, 7, (1, 1), (2, 2), (1, 1)),
    "c4_3x3_pad0": (1, 6, 7, 4, (3, 3), (1, 1), (0, 0)),
    "c6_3x3_pad2": (1, 4, 4, 6, (3, 3), (1, 1), (2, 2)),
    "c5_3x3_stride2_pad0_batch3": (3, 9, 7, 5, (3, 3), (2, 2), (0, 0)),
    "c3_5x3_stride2x1_pad2": (2, 8, 5, 3, (5, 3), (2, 1), (2, 2)),
    "c9_image_smaller_than_kernel": (1, 2, 2, 9, (5, 3), (1, 1), (2, 1)),
    "c5_1x1_image_3x3_kernel": (3, 1, 1, 5, (3, 3), (1, 1), (1, 1)),
    "c1_conv1d_k5": (2, 1, 19, 1, (1, 5), (1, 2), (0, 2)),
    # 32 channels (8 groups) on the keyword-spotting map: several bands of rows.
    "c32_kws_25x5": (1, 25, 5, 32, (3, 3), (1, 1), (1, 1)),
    "c32_kws_batch3": (3, 25, 5, 32, (3, 3), (1, 1), (1, 1)),
    "c12_16x16_bands": (1, 16, 16, 12, (3, 3), (1, 1), (1, 1)),
}

# x zero point and how weights are drawn
EXTREMES = {
    "random": (3, "random"),
    "zp_min_w_pm127": (-128, "pm127"),
    "zp_max_w_pm127": (127, "pm127"),
    "zp_max_w_max": (127, "max"),
}


def dw_case(case, extreme, crop=(0, 0)):
    n, h, w, c, (kh, kw), (sh, sw), (ph, pw) = DW_CASES[case]
    zp, wkind = EXTREMES[extreme]
    rng = np.random.default_rng(sum(map(ord, case + extreme)))
    oh = max(1, (h + 2 * ph - kh) // sh + 1 - crop[0])
    ow = max(1, (w + 2 * pw - kw) // sw + 1 - crop[1])
    if wkind == "random":
        wq = rng.integers(-127, 128, (c, kh, kw, 1))
    elif wkind == "pm127":
        wq = rng.choice([-127, 127], (c, kh, kw, 1))
    else:
        wq = np.full((c, kh, kw, 1), 127)
    x = rng.integers(-128, 128, (n, h, w, c))
    if extreme != "random":
        # The far end of the range from the zero point: |x - zp| = 255 where possible.
        x[rng.random(x.shape) < 0.5] = -128 if zp == 127 else 127
    d = {
        "x": s8(x),
        "w": s8(wq),
        "w_scale": np.float32(rng.uniform(0.002, 0.02, c)),
        "b": rng.integers(-3000, 3000, c).astype(np.int32),
        "dy": s8(rng.integers(-127, 128, (n, oh, ow, c))),
    }
    if extreme != "random":
        d["dy"][rng.random(d["dy"].shape) < 0.5] = 127
    params = Conv2dParams(n, h, w, c, oh, ow, c, kh, kw, sh, sw, ph, pw, c)
    args = {"stride": (sh, sw), "padding": (ph, pw), "groups": c}
    return params, d, args, zp


CROPS = {"full": (0, 0), "cropped": (1, 1)}


@pytest.mark.parametrize("extreme", EXTREMES)
@pytest.mark.parametrize("case", DW_CASES)
def test_depthwise_s8_forward_matches_integer_reference_bit_for_bit(lib, case, extreme):  # noqa: F811
    for crop in CROPS.values():
        params, d, args, zp = dw_case(case, extreme, crop)
        out_hw = (params.out_h, params.out_w)
        for bias, act in ((d["b"], (-128, 127)), (None, (-7, 127)), (d["b"], (-7, 23))):
            _, (lo, hi) = Q.conv2d_s8_forward(d["x"], d["w"], d["w_scale"], bias, quant(x_zp=zp)[1],
                                              out_hw=out_hw, **args)
            qc, qr = quant(x_zp=zp, y_scale=max(-lo, hi, 1e-3) / 110, act=act)
            y = Guarded(np.zeros((params.batch, params.out_h, params.out_w, params.out_c), np.int8))
            scratch = Guarded.scratch(lib.mt_conv2d_s8_scratch_bytes(ctypes.byref(params)))
            rng = Range()
            assert lib.mt_conv2d_s8_forward(ctypes.byref(params), ctypes.byref(qc), ptr(d["x"]),
                                            ptr(d["w"]), ptr(d["w_scale"]), ptr(bias), y.p,
                                            ctypes.byref(rng), scratch.p) == 0
            scratch.value()
            ref, ref_range = Q.conv2d_s8_forward(d["x"], d["w"], d["w_scale"], bias, qr,
                                                 out_hw=out_hw, **args)
            np.testing.assert_array_equal(y.value(), ref, err_msg=f"{case} {extreme} {crop} {act}")
            assert (rng.min, rng.max) == (np.float32(ref_range[0]), np.float32(ref_range[1]))


@pytest.mark.parametrize("extreme", EXTREMES)
@pytest.mark.parametrize("case", DW_CASES)
def test_depthwise_s8_grad_input_matches_integer_reference_bit_for_bit(lib, case, extreme):  # noqa: F811
    for crop in CROPS.values():
        params, d, args, zp = dw_case(case, extreme, crop)
        _, absmax0 = Q.conv2d_s8_grad_input(d["x"].shape, d["w"], d["w_scale"], d["dy"],
                                            quant(x_zp=zp)[1], **args)
        qc, qr = quant(x_zp=zp, dx_scale=max(absmax0, 1e-3) / 110)
        dx = Guarded(np.zeros(d["x"].shape, np.int8))
        scratch = Guarded.scratch(lib.mt_conv2d_s8_scratch_bytes(ctypes.byref(params)))
        absmax = c_float()
        assert lib.mt_conv2d_s8_grad_input(ctypes.byref(params), ctypes.byref(qc), ptr(d["dy"]),
                                           ptr(d["w"]), ptr(d["w_scale"]), dx.p,
                                           ctypes.byref(absmax), scratch.p) == 0
        scratch.value()
        ref, ref_absmax = Q.conv2d_s8_grad_input(d["x"].shape, d["w"], d["w_scale"], d["dy"], qr,
                                                 **args)
        np.testing.assert_array_equal(dx.value(), ref, err_msg=f"{case} {extreme} {crop}")
        assert absmax.value == np.float32(ref_absmax)


@pytest.mark.parametrize("extreme", EXTREMES)
@pytest.mark.parametrize("case", DW_CASES)
def test_depthwise_s8_update_matches_reference_bit_for_bit(lib, case, extreme):  # noqa: F811
    for crop in CROPS.values():
        params, d, args, zp = dw_case(case, extreme, crop)
        qc, qr = quant(x_zp=zp)
        for name, kw in UPDATES.items():
            got = run_conv_update(lib, params, d, qc,
                                  S8Update(**{"eps": 1e-8, "rescale_below": 1.0, **kw}))
            ref = Q.conv2d_s8_update(d["x"], d["dy"], d["w"], d["w_scale"], d["b"], qr,
                                     Q.S8Update(**kw), **args)
            assert_update_matches(got, ref, f"{case} {extreme} {crop} {name}")


@pytest.mark.parametrize("case", ["c5_5x3_pad2x1", "c32_kws_batch3", "c3_5x3_stride2x1_pad2"])
def test_depthwise_s8_update_with_a_mask_and_stochastic_rounding(lib, case):  # noqa: F811
    params, d, args, zp = dw_case(case, "random")
    qc, qr = quant(x_zp=zp)
    mask = np.random.default_rng(7).random(params.out_c) < 0.5
    mask[-1] = True
    kw = dict(lr=0.02, sigma_w=0.004, sigma_b=0.3)
    got = run_conv_update(lib, params, d, qc, S8Update(eps=1e-8, rescale_below=1.0, **kw),
                          mask=mask, rng_state=5)
    ref_rng = Q.Rng(5)
    ref = Q.conv2d_s8_update(d["x"], d["dy"], d["w"], d["w_scale"], d["b"], qr,
                             Q.S8Update(rng=ref_rng, **kw), mask=mask, **args)
    assert_update_matches(got, ref, case)
    assert got[5].state == ref_rng.state
    np.testing.assert_array_equal(got[0][~mask], d["w"][~mask])


# The scratch of the layers the benchmarks and the keyword-spotting model use stays within
# what depthwise layers took before the planes (C * (32 + 5 * taps) bytes, 8-byte rounded)
# plus 256 bytes (small layers may take more: the planes are 4 channels wide).
@pytest.mark.parametrize("shape", [(1, 25, 5, 32), (4, 25, 5, 32), (1, 16, 16, 32), (1, 49, 10, 64)])
def test_depthwise_s8_scratch_stays_within_the_old_size_plus_256_bytes(lib, shape):  # noqa: F811
    n, h, w, c = shape
    params = Conv2dParams(n, h, w, c, h, w, c, 3, 3, 1, 1, 1, 1, c)
    taps = 9
    r8 = lambda v: (v + 7) // 8 * 8  # noqa: E731
    old = r8(24 * c) + r8(8 * c) + r8(taps * c) + r8(4 * taps * c) + r8(4 * taps)
    got = lib.mt_conv2d_s8_scratch_bytes(ctypes.byref(params))
    assert got == lib.mt_conv2d_s8_update_scratch_bytes(ctypes.byref(params), 3)
    assert got <= old + 256, (got, old)


def test_depthwise_s8_update_refuses_too_little_scratch(lib):  # noqa: F811
    params, d, _, zp = dw_case("c7_1x1", "random")
    qc, _ = quant(x_zp=zp)
    w = Guarded(d["w"])
    scratch = Guarded.scratch(64)
    assert lib.mt_conv2d_s8_update(ctypes.byref(params), ctypes.byref(qc), None, ptr(d["x"]),
                                   ptr(d["dy"]), w.p, ptr(d["w_scale"]), ptr(d["b"]), None, None,
                                   None, scratch.p, 64) == -1
    np.testing.assert_array_equal(w.value(), d["w"])
