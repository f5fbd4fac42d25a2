"""The numpy reference (mcutrain.reference) checked against finite differences and by hand.

Gradient checks use central differences in float64 with step 1e-6 on the scalar
L = sum(R * f(inputs)) for a fixed random R, so every backward is checked for an arbitrary dy.
Central differences have truncation error ~ step^2 * |f'''| ~ 1e-12 and rounding error
~ 1e-16 * |L| / step ~ 1e-9 for our |L| <= ~1e1, so agreement to 1e-6 relative to the largest
gradient entry leaves a 1000x margin while catching any real mistake (a wrong index or a missing
term is off by O(1)). Piecewise-linear functions (ReLU, max pooling) are only checked at
inputs at least 1e-3 away from their kinks, where they are smooth within the step.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest
from mcutrain import reference as R
from mcutrain.reference import functional as F

STEP = 1e-6
# See the module docstring: max |analytic - numeric| / max(1, max |numeric|).
GRAD_RTOL = 1e-6


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def numeric_grad(loss: Callable[[], float], x: np.ndarray) -> np.ndarray:
    """Central-difference gradient of loss() with respect to x, which is perturbed in place."""
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    assert np.shares_memory(flat, x)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + STEP
        up = loss()
        flat[i] = old - STEP
        down = loss()
        flat[i] = old
        gflat[i] = (up - down) / (2 * STEP)
    return grad


def assert_grad(analytic: np.ndarray, numeric: np.ndarray, what: str = "") -> None:
    assert analytic.shape == numeric.shape, what
    scale = max(1.0, float(np.abs(numeric).max()))
    err = float(np.abs(analytic - numeric).max()) / scale
    assert err < GRAD_RTOL, f"{what}: relative gradient error {err:.3g}"


def check_grads(
    forward: Callable[..., np.ndarray],
    backward: Callable[[np.ndarray], tuple[np.ndarray, ...]],
    inputs: dict[str, np.ndarray],
    seed: int = 1,
) -> None:
    """forward(**inputs) -> y; backward(dy) -> gradients in the order of `inputs`."""
    dy = rng(seed).normal(size=forward(**inputs).shape)
    grads = backward(dy)
    assert len(grads) == len(inputs)
    for (name, x), analytic in zip(inputs.items(), grads, strict=True):
        numeric = numeric_grad(lambda: float(np.sum(dy * forward(**inputs))), x)
        assert_grad(analytic, numeric, name)


def away_from(x: np.ndarray, points: tuple[float, ...], margin: float = 1e-3) -> np.ndarray:
    """x with entries closer than margin to any of points pushed out to the margin."""
    for p in points:
        near = np.abs(x - p) < margin
        x[near] = p + np.where(x[near] >= p, margin, -margin)
    return x


def naive_conv2d(x, w, b, stride, padding, groups):
    """Direct loops over the definition: independent of the im2col implementation."""
    n, h, wd, _ = x.shape
    o, kh, kw, cg = w.shape
    sh, sw = stride
    ph, pw = padding
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    og = o // groups
    y = np.zeros((n, oh, ow, o))
    for b_ in range(n):
        for i in range(oh):
            for j in range(ow):
                for oc in range(o):
                    g = oc // og
                    acc = 0.0 if b is None else b[oc]
                    for u in range(kh):
                        for v in range(kw):
                            r, s = i * sh + u - ph, j * sw + v - pw
                            if 0 <= r < h and 0 <= s < wd:
                                for ci in range(cg):
                                    acc += w[oc, u, v, ci] * x[b_, r, s, g * cg + ci]
                    y[b_, i, j, oc] = acc
    return y


# ---------------------------------------------------------------------------------------------
# convolution and linear

CONV_CASES = [
    # (batch, h, w, in_c, out_c, kernel, stride, padding, groups, bias)
    pytest.param(1, 5, 4, 3, 4, (3, 3), (1, 1), (0, 0), 1, True, id="batch1-nonsquare"),
    pytest.param(3, 7, 6, 5, 6, (3, 2), (2, 2), (1, 1), 1, True, id="c5-stride2-pad1"),
    pytest.param(2, 6, 5, 6, 4, (3, 3), (2, 1), (2, 2), 2, True, id="groups2-pad2"),
    pytest.param(3, 5, 5, 7, 7, (3, 3), (1, 1), (1, 1), 7, True, id="depthwise-c7"),
    pytest.param(1, 6, 7, 3, 6, (2, 3), (2, 2), (1, 2), 3, False, id="depthwise-x2-nobias"),
    pytest.param(3, 4, 4, 5, 3, (1, 1), (2, 2), (0, 0), 1, True, id="pointwise-stride2"),
]


@pytest.mark.parametrize("n,h,w,c,o,k,s,p,g,bias", CONV_CASES)
def test_conv2d_forward_matches_naive_loops(n, h, w, c, o, k, s, p, g, bias):
    r = rng()
    x = r.normal(size=(n, h, w, c))
    wt = r.normal(size=(o, *k, c // g))
    b = r.normal(size=o) if bias else None
    y = F.conv2d_forward(x, wt, b, s, p, g)
    # Both are float64 sums of the same few products in different orders.
    np.testing.assert_allclose(y, naive_conv2d(x, wt, b, s, p, g), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n,h,w,c,o,k,s,p,g,bias", CONV_CASES)
def test_conv2d_backward_matches_finite_differences(n, h, w, c, o, k, s, p, g, bias):
    r = rng(2)
    inputs = {"x": r.normal(size=(n, h, w, c)), "w": r.normal(size=(o, *k, c // g))}
    if bias:
        inputs["b"] = r.normal(size=o)

    def forward(x, w, b=None):
        return F.conv2d_forward(x, w, b, s, p, g)

    def backward(dy):
        dx, dw, db = F.conv2d_backward(inputs["x"], inputs["w"], dy, s, p, g)
        return (dx, dw, db) if bias else (dx, dw)

    check_grads(forward, backward, inputs)


def test_conv2d_output_size_and_int_arguments():
    x = rng().normal(size=(2, 9, 8, 3))
    w = rng().normal(size=(4, 3, 3, 3))
    # PyTorch's formula (in + 2p - k) // s + 1: rows 9 -> 5, cols 8 -> 4 (the last col unused).
    y = F.conv2d_forward(x, w, None, 2, 1)
    assert y.shape == (2, 5, 4, 4)
    np.testing.assert_array_equal(y, F.conv2d_forward(x, w, None, (2, 2), (1, 1)))
    assert F.conv_output_size(8, 3, 2, 1) == 4


def test_conv2d_rejects_mismatched_groups():
    with pytest.raises(ValueError, match="groups"):
        F.conv2d_forward(np.zeros((1, 4, 4, 6)), np.zeros((4, 3, 3, 4)), groups=2)
    with pytest.raises(ValueError, match="smaller than kernel"):
        F.conv2d_forward(np.zeros((1, 2, 2, 1)), np.zeros((1, 3, 3, 1)))


@pytest.mark.parametrize(
    "n,length,c,o,k,s,p,g",
    [
        pytest.param(1, 9, 3, 4, 3, 1, 0, 1, id="batch1"),
        pytest.param(3, 10, 4, 6, 5, 2, 2, 2, id="stride2-pad2-groups2"),
        pytest.param(2, 7, 5, 5, 3, 1, 1, 5, id="depthwise-pad1"),
    ],
)
def test_conv1d_backward_matches_finite_differences(n, length, c, o, k, s, p, g):
    r = rng(3)
    inputs = {"x": r.normal(size=(n, length, c)), "w": r.normal(size=(o, k, c // g)),
              "b": r.normal(size=o)}

    def forward(x, w, b):
        return F.conv1d_forward(x, w, b, s, p, g)

    check_grads(forward, lambda dy: F.conv1d_backward(inputs["x"], inputs["w"], dy, s, p, g),
                inputs)
    # And it is the H = 1 case of conv2d.
    y2 = naive_conv2d(inputs["x"][:, None], inputs["w"][:, None], inputs["b"], (1, s), (0, p), g)
    np.testing.assert_allclose(forward(**inputs), y2[:, 0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch,bias", [(1, True), (3, True), (3, False)])
def test_linear_backward_matches_finite_differences(batch, bias):
    r = rng(4)
    inputs = {"x": r.normal(size=(batch, 7)), "w": r.normal(size=(5, 7))}
    if bias:
        inputs["b"] = r.normal(size=5)

    def backward(dy):
        dx, dw, db = F.linear_backward(inputs["x"], inputs["w"], dy)
        return (dx, dw, db) if bias else (dx, dw)

    check_grads(F.linear_forward, backward, inputs)


# ---------------------------------------------------------------------------------------------
# activations, softmax, add


def test_relu_backward_matches_finite_differences():
    x = away_from(rng(5).normal(size=(3, 4, 5, 2)), (0.0,))
    check_grads(lambda x: F.relu_forward(x), lambda dy: (F.relu_backward(F.relu_forward(x), dy),),
                {"x": x})


def test_relu6_backward_matches_finite_differences_and_masks_saturation():
    x = away_from(rng(6).normal(scale=5, size=(3, 17)), (0.0, 6.0))
    assert (x > 6).any() and (x < 0).any()
    check_grads(lambda x: F.relu6_forward(x),
                lambda dy: (F.relu6_backward(F.relu6_forward(x), dy),), {"x": x})
    # At exactly 0 and 6 no gradient passes (the device masks 0 < y < 6).
    np.testing.assert_array_equal(
        F.relu6_backward(np.array([0.0, 3.0, 6.0]), np.ones(3)), [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(F.relu_backward(np.array([0.0, 2.0]), np.ones(2)), [0.0, 1.0])


def test_softmax_backward_matches_finite_differences():
    x = rng(7).normal(size=(3, 5))
    check_grads(lambda x: F.softmax_forward(x),
                lambda dy: (F.softmax_backward(F.softmax_forward(x), dy),), {"x": x})


def test_softmax_is_stable_for_large_logits():
    y = F.softmax_forward(np.array([[1e4, 0.0, -1e4], [1e4, 1e4, 1e4]]))
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-15, atol=1e-300)


def test_add_backward_passes_dy_to_both_inputs():
    dy = rng().normal(size=(2, 3))
    da, db = F.add_backward(dy)
    np.testing.assert_array_equal(da, dy)
    np.testing.assert_array_equal(db, dy)
    with pytest.raises(ValueError, match="differ"):
        F.add_forward(np.zeros((2, 3)), np.zeros((2, 4)))


# ---------------------------------------------------------------------------------------------
# pooling and reshaping

POOL_CASES = [
    # (input shape, kernel, stride, padding)
    pytest.param((1, 4, 6, 3), 2, None, 0, id="k2-batch1"),
    pytest.param((3, 7, 5, 5), 3, 2, 1, id="k3-stride2-pad1"),
    pytest.param((2, 5, 6, 7), (3, 2), 1, (1, 1), id="k3x2-overlapping"),
    pytest.param((2, 6, 7, 2), (2, 4), (1, 2), (1, 2), id="pad-1x2"),
]


@pytest.mark.parametrize("shape,k,s,p", POOL_CASES)
def test_maxpool2d_backward_matches_finite_differences(shape, k, s, p):
    # A permutation of well-separated values: no ties, and no window max within the step of
    # another value.
    x = rng(8).permutation(np.prod(shape)).reshape(shape) * 0.01
    check_grads(lambda x: F.maxpool2d_forward(x, k, s, p),
                lambda dy: (F.maxpool2d_backward(x, dy, k, s, p),), {"x": x})


@pytest.mark.parametrize("shape,k,s,p", POOL_CASES)
def test_avgpool2d_backward_matches_finite_differences(shape, k, s, p):
    x = rng(9).normal(size=shape)
    check_grads(lambda x: F.avgpool2d_forward(x, k, s, p),
                lambda dy: (F.avgpool2d_backward(x.shape, dy, k, s, p),), {"x": x})


def test_maxpool2d_ties_go_to_first_maximum_and_padding_is_minus_infinity():
    x = np.ones((1, 2, 2, 1))
    dx = F.maxpool2d_backward(x, np.array([[[[5.0]]]]), 2)
    np.testing.assert_array_equal(dx[0, :, :, 0], [[5.0, 0.0], [0.0, 0.0]])
    # All-negative input: padded windows still pick a real pixel, never the padding.
    x = -1.0 - np.arange(9.0).reshape(1, 3, 3, 1)
    y = F.maxpool2d_forward(x, 3, 1, 1)
    assert (y < 0).all()
    assert y[0, 0, 0, 0] == -1.0 and y[0, 2, 2, 0] == -5.0
    with pytest.raises(ValueError, match="at most half"):
        F.maxpool2d_forward(np.zeros((1, 4, 4, 1)), 2, 2, 2)


def test_avgpool2d_counts_padding_in_the_divisor():
    x = np.ones((1, 2, 2, 1))
    y = F.avgpool2d_forward(x, 2, 2, 1)  # every window holds one real pixel of four
    np.testing.assert_array_equal(y[0, :, :, 0], np.full((2, 2), 0.25))


def test_global_avgpool_and_flatten_backward_match_finite_differences():
    for shape in [(3, 4, 5, 6), (2, 7, 3)]:
        check_grads(lambda x: F.global_avgpool_forward(x),
                    lambda dy, shape=shape: (F.global_avgpool_backward(shape, dy),),
                    {"x": rng(10).normal(size=shape)})
    x = rng(11).normal(size=(2, 3, 4, 5))
    check_grads(lambda x: F.flatten_forward(x),
                lambda dy: (F.flatten_backward(x.shape, dy),), {"x": x})


def test_flatten_is_channels_last_row_major():
    x = np.arange(2 * 2 * 3, dtype=float).reshape(1, 2, 2, 3)  # (N, H, W, C)
    flat = F.flatten_forward(x)
    assert flat[0, 1] == x[0, 0, 0, 1]  # the next element is the next channel of one pixel
    assert flat[0, 3] == x[0, 0, 1, 0]


# ---------------------------------------------------------------------------------------------
# batch norm


@pytest.mark.parametrize("shape", [(3, 4, 5, 3), (1, 2, 3, 5), (6, 4)])
def test_batchnorm2d_train_backward_matches_finite_differences(shape):
    r = rng(12)
    c = shape[-1]
    inputs = {"x": r.normal(loc=1.0, scale=2.0, size=shape), "gamma": r.normal(size=c),
              "beta": r.normal(size=c)}

    def forward(x, gamma, beta):
        return F.batchnorm2d_forward_train(x, gamma, beta, None, None)[0]

    def backward(dy):
        _, cache = F.batchnorm2d_forward_train(inputs["x"], inputs["gamma"], inputs["beta"],
                                               None, None)
        return F.batchnorm2d_backward(dy, cache)

    check_grads(forward, backward, inputs)


def test_batchnorm2d_eval_backward_matches_finite_differences():
    r = rng(13)
    inputs = {"x": r.normal(size=(2, 3, 3, 4)), "gamma": r.normal(size=4),
              "beta": r.normal(size=4)}
    mean, var = r.normal(size=4), r.uniform(0.5, 2.0, size=4)

    def forward(x, gamma, beta):
        return F.batchnorm2d_forward_eval(x, gamma, beta, mean, var)

    cache = F.batchnorm2d_eval_cache(inputs["x"], inputs["gamma"], mean, var)
    check_grads(forward, lambda dy: F.batchnorm2d_backward(dy, cache), inputs)


def test_batchnorm2d_train_normalizes_and_updates_running_stats():
    x = rng(14).normal(loc=3.0, scale=2.0, size=(4, 3, 2, 5))
    rm, rv = np.full(5, 0.5), np.full(5, 2.0)
    y, _ = F.batchnorm2d_forward_train(x, np.ones(5), np.zeros(5), rm, rv, momentum=0.1)
    rows = x.reshape(-1, 5)
    np.testing.assert_allclose(y.reshape(-1, 5).mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(y.reshape(-1, 5).var(axis=0), rows.var(axis=0) / (
        rows.var(axis=0) + 1e-5), rtol=1e-12)  # biased variance and eps, as PyTorch
    np.testing.assert_allclose(rm, 0.9 * 0.5 + 0.1 * rows.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(rv, 0.9 * 2.0 + 0.1 * rows.var(axis=0, ddof=1), rtol=1e-14)
    # One row: there is no unbiased variance, so only the mean moves.
    rm, rv = np.zeros(2), np.ones(2)
    F.batchnorm2d_forward_train(np.array([[1.0, 2.0]]), np.ones(2), np.zeros(2), rm, rv)
    np.testing.assert_allclose(rm, [0.1, 0.2])
    np.testing.assert_array_equal(rv, [1.0, 1.0])


@pytest.mark.parametrize("bias", [True, False])
def test_batchnorm_fold_matches_conv_then_eval_batchnorm(bias):
    r = rng(15)
    x = r.normal(size=(2, 6, 5, 3))
    w = r.normal(size=(4, 3, 3, 3))
    b = r.normal(size=4) if bias else None
    gamma, beta, mean = r.normal(size=4), r.normal(size=4), r.normal(size=4)
    var = r.uniform(0.1, 3.0, size=4)
    expect = F.batchnorm2d_forward_eval(F.conv2d_forward(x, w, b, 2, 1), gamma, beta, mean, var)
    w2, b2 = F.batchnorm_fold(w, b, gamma, beta, mean, var)
    # Folding reassociates a few float64 products: relative error ~1e-15.
    np.testing.assert_allclose(F.conv2d_forward(x, w2, b2, 2, 1), expect, rtol=1e-10,
                               atol=1e-12)
    lw = r.normal(size=(4, 7))
    xl = r.normal(size=(3, 7))
    expect = F.batchnorm2d_forward_eval(F.linear_forward(xl, lw, b), gamma, beta, mean, var)
    w2, b2 = F.batchnorm_fold(lw, b, gamma, beta, mean, var)
    np.testing.assert_allclose(F.linear_forward(xl, w2, b2), expect, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# losses


def test_cross_entropy_value_and_gradient():
    r = rng(16)
    logits = r.normal(size=(4, 5))
    labels = np.array([0, 3, 4, 3])
    loss, grad = F.cross_entropy(logits, labels)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(loss, -np.mean(np.log(p[np.arange(4), labels])), rtol=1e-14)
    numeric = numeric_grad(lambda: F.cross_entropy(logits, labels)[0], logits)
    assert_grad(grad, numeric, "dlogits")


def test_cross_entropy_is_finite_for_huge_logits():
    loss, grad = F.cross_entropy(np.array([[1e4, 0.0], [0.0, 1e4], [-1e4, 1e4]]), [0, 0, 1])
    assert np.isfinite(loss) and np.isfinite(grad).all()
    np.testing.assert_allclose(loss, 1e4 / 3)  # only the second row is wrong, by 1e4
    np.testing.assert_allclose(grad, [[0, 0], [-1 / 3, 1 / 3], [0, 0]], atol=1e-300)


@pytest.mark.parametrize(
    "labels", [[0, 3], [-1, 0], [0.0, 1.0], [[0], [1]], [0, 1, 2], [True, False]],
    ids=["too-big", "negative", "float", "2d", "too-many", "bool"])
def test_cross_entropy_rejects_invalid_labels(labels):
    with pytest.raises(ValueError, match="cross_entropy"):
        F.cross_entropy(np.zeros((2, 3)), np.array(labels))


def test_mse_value_and_gradient():
    r = rng(17)
    pred, target = r.normal(size=(3, 4)), r.normal(size=(3, 4))
    loss, grad = F.mse(pred, target)
    np.testing.assert_allclose(loss, np.mean((pred - target) ** 2), rtol=1e-14)
    assert_grad(grad, numeric_grad(lambda: F.mse(pred, target)[0], pred), "dpred")
    with pytest.raises(ValueError, match="mse"):
        F.mse(np.zeros(3), np.zeros(4))


# ---------------------------------------------------------------------------------------------
# optimizers


def test_sgd_step_matches_hand_computed_updates():
    # Plain: w -= lr * (g + wd * w) = 1 - 0.1 * (0.5 + 0.1) = 0.94.
    w = np.array([1.0])
    out, v = F.sgd_step(w, np.array([0.5]), None, lr=0.1, weight_decay=0.1)
    assert out is w and v is None
    np.testing.assert_allclose(w, [0.94], rtol=1e-15)
    # Momentum 0.9, g = 0.5 twice: v1 = 0.5, w1 = 0.95; v2 = 0.95, w2 = 0.855.
    w, v = np.array([1.0, -2.0]), np.zeros(2)
    F.sgd_step(w, np.array([0.5, 0.0]), v, lr=0.1, momentum=0.9)
    np.testing.assert_allclose((w, v), ([0.95, -2.0], [0.5, 0.0]), rtol=1e-15)
    F.sgd_step(w, np.array([0.5, 0.0]), v, lr=0.1, momentum=0.9)
    np.testing.assert_allclose((w, v), ([0.855, -2.0], [0.95, 0.0]), rtol=1e-15)
    # Weight decay enters the velocity: g' = 0 + 0.5 * 2 = 1, v = 1, w = 2 - 0.1 = 1.9.
    w, v = np.array([2.0]), np.zeros(1)
    F.sgd_step(w, np.zeros(1), v, lr=0.1, momentum=0.9, weight_decay=0.5)
    np.testing.assert_allclose((w, v), ([1.9], [1.0]), rtol=1e-15)


def test_adam_step_matches_hand_computed_updates():
    # Step 1: bias correction makes m_hat = g and v_hat = g^2, so w moves by lr * g / (|g| + eps).
    w, m, v = np.array([1.0, 1.0]), np.zeros(2), np.zeros(2)
    g1 = np.array([0.5, -2.0])
    F.adam_step(w, g1, m, v, 1, lr=0.01)
    np.testing.assert_allclose(m, 0.1 * g1, rtol=1e-15)
    np.testing.assert_allclose(v, 0.001 * g1**2, rtol=1e-15)
    np.testing.assert_allclose(w, [1 - 0.01 * 0.5 / (0.5 + 1e-8), 1 + 0.01 * 2 / (2 + 1e-8)],
                               rtol=1e-15)
    # Step 2, textbook form (Kingma & Ba, Algorithm 1) with L2 decay added to the gradient.
    g2 = np.array([0.1, 0.3])
    w_before = w.copy()
    gd = g2 + 0.01 * w_before
    m_exp = 0.9 * 0.1 * g1 + 0.1 * gd
    v_exp = 0.999 * 0.001 * g1**2 + 0.001 * gd**2
    w_exp = w_before - 0.01 * (m_exp / (1 - 0.9**2)) / (np.sqrt(v_exp / (1 - 0.999**2)) + 1e-8)
    F.adam_step(w, g2, m, v, 2, lr=0.01, weight_decay=0.01)
    np.testing.assert_allclose((m, v), (m_exp, v_exp), rtol=1e-14)
    np.testing.assert_allclose(w, w_exp, rtol=1e-14)
    with pytest.raises(ValueError, match="from 1"):
        F.adam_step(w, g2, m, v, 0, lr=0.01)


def test_optimizers_match_torch_optim():
    torch = pytest.importorskip("torch")
    r = rng(18)
    w0 = r.normal(size=(3, 4))
    grads = [r.normal(size=(3, 4)) for _ in range(4)]
    for kind, kwargs in [("sgd", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}),
                         ("adam", {"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 0.01})]:
        p = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
        opt = (torch.optim.SGD if kind == "sgd" else torch.optim.Adam)([p], **kwargs)
        w, s1, s2 = w0.copy(), np.zeros_like(w0), np.zeros_like(w0)
        for t, g in enumerate(grads, start=1):
            p.grad = torch.tensor(g, dtype=torch.float64)
            opt.step()
            if kind == "sgd":
                F.sgd_step(w, g, s1, kwargs["lr"], kwargs["momentum"], kwargs["weight_decay"])
            else:
                F.adam_step(w, g, s1, s2, t, kwargs["lr"], *kwargs["betas"],
                            weight_decay=kwargs["weight_decay"])
        # Same float64 formulas, possibly different operation order (torch may fuse).
        np.testing.assert_allclose(w, p.detach().numpy(), rtol=1e-12, atol=1e-14, err_msg=kind)


# ---------------------------------------------------------------------------------------------
# nn: layers, models, optimizers


def check_module_grads(model: R.Module, x: np.ndarray, training: bool = True) -> None:
    """Finite-difference check of a module's input gradient and every parameter gradient."""
    dy = rng(19).normal(size=model.forward(x, training).shape)
    dx = model.backward(dy)

    def loss() -> float:
        return float(np.sum(dy * model.forward(x, training)))

    grads = [(layer.grads[name], w, f"{type(layer).__name__}.{name}")
             for layer, name, w in model.parameters() if layer.trainable]
    assert_grad(dx, numeric_grad(loss, x), "input")
    for analytic, w, what in grads:
        assert_grad(analytic, numeric_grad(loss, w), what)


def small_cnn(gen: np.random.Generator) -> R.Sequential:
    return R.Sequential(
        R.Conv2d(3, 4, (3, 2), stride=1, padding=1, rng=gen),
        R.BatchNorm2d(4),
        R.ReLU6(),
        R.Conv2d(4, 4, 3, padding=1, groups=4, bias=False, rng=gen),
        R.ReLU(),
        R.MaxPool2d(2, padding=1),
        R.AvgPool2d((1, 2)),
        R.Flatten(),
        R.Linear(4 * 3 * 1, 3, rng=gen),
        R.Softmax(),
    )


def test_sequential_gradients_match_finite_differences():
    model = small_cnn(rng(20))
    x = rng(21).normal(size=(3, 5, 4, 3))
    check_module_grads(model, x)


def test_conv1d_model_gradients_match_finite_differences():
    model = R.Sequential(R.Conv1d(2, 4, 3, stride=2, padding=1, rng=rng(22)), R.ReLU(),
                         R.Conv1d(4, 4, 3, padding=2, groups=2, rng=rng(23)),
                         R.GlobalAvgPool(), R.Linear(4, 2, rng=rng(24)))
    assert model[0].weight.shape == (4, 3, 2)
    check_module_grads(model, rng(25).normal(size=(2, 9, 2)))


def test_residual_with_strided_1x1_shortcut():
    gen = rng(26)
    block = R.Residual(
        R.Sequential(R.Conv2d(3, 6, 3, stride=2, padding=1, rng=gen), R.BatchNorm2d(6), R.ReLU(),
                     R.Conv2d(6, 6, 3, padding=1, rng=gen)),
        shortcut=R.Sequential(R.Conv2d(3, 6, 1, stride=2, rng=gen), R.BatchNorm2d(6)),
    )
    model = R.Sequential(block, R.Residual(R.Sequential(R.ReLU(), R.Conv2d(6, 6, 1, rng=gen))),
                         R.GlobalAvgPool(), R.Linear(6, 2, rng=gen))
    x = rng(27).normal(size=(2, 6, 5, 3))
    assert block.forward(x).shape == (2, 3, 3, 6)
    names = list(model.state_dict())
    assert names[:3] == ["0.body.0.weight", "0.body.0.bias", "0.body.1.weight"]
    assert "0.shortcut.0.weight" in names and "0.shortcut.1.running_var" in names
    assert "1.body.1.bias" in names and names[-1] == "3.bias"
    check_module_grads(model, x)
    # Identity shortcut: the block's input gradient includes dy itself.
    ident = R.Residual(R.Sequential(R.Linear(3, 3, rng=gen)))
    dy = np.ones((1, 3))
    ident.forward(np.zeros((1, 3)))
    np.testing.assert_allclose(ident.backward(dy), dy + dy @ ident.body[0].weight)
    with pytest.raises(ValueError, match="Residual"):
        R.Residual(R.Linear(3, 2, rng=gen)).forward(np.zeros((1, 3)))


def test_batchnorm_layer_eval_mode_uses_running_stats_and_trains_gamma_beta():
    bn = R.BatchNorm2d(3)
    bn.running_mean[:] = [1.0, 2.0, 3.0]
    bn.running_var[:] = [4.0, 1.0, 0.25]
    x = rng(28).normal(size=(2, 2, 2, 3))
    y = bn.forward(x, training=False)
    np.testing.assert_allclose(y, (x - bn.running_mean) / np.sqrt(bn.running_var + 1e-5))
    np.testing.assert_array_equal(bn.running_mean, [1.0, 2.0, 3.0])  # eval leaves them alone
    check_module_grads(bn, x, training=False)


def test_tiny_cnn_overfits_16_samples():
    gen = rng(29)
    x = gen.normal(size=(16, 8, 8, 1))
    y = gen.integers(0, 4, size=16)
    model = R.Sequential(
        R.Conv2d(1, 8, 3, padding=1, rng=gen), R.BatchNorm2d(8), R.ReLU(), R.MaxPool2d(2),
        R.Conv2d(8, 8, 3, stride=2, padding=1, rng=gen), R.ReLU(),
        R.Flatten(), R.Linear(8 * 2 * 2, 4, rng=gen))
    opt = R.SGD(model, lr=0.05, momentum=0.9, weight_decay=1e-4)
    first = model.train_step(x, y, R.cross_entropy, opt)
    for _ in range(150):
        last = model.train_step(x, y, R.cross_entropy, opt)
    assert last < 0.05 * first, (first, last)
    loss, acc = model.evaluate(x, y)
    assert acc == 1.0 and loss < 0.2 * first


def test_adam_trains_a_regression_model_with_mse():
    gen = rng(30)
    x = gen.normal(size=(32, 5))
    target = x @ gen.normal(size=(5, 2)) + 0.5
    model = R.Sequential(R.Linear(5, 2, rng=gen))
    opt = R.Adam(model, lr=0.05)
    first = model.train_step(x, target, R.mse, opt)
    for _ in range(300):
        last = model.train_step(x, target, R.mse, opt)
    assert last < 1e-3 * first
    loss, acc = model.evaluate(x, target, loss=R.mse)
    assert loss == pytest.approx(last, rel=0.1)
    assert 0.0 <= acc <= 1.0  # argmax agreement, as for one-hot targets


def test_optimizer_classes_match_functional_steps():
    gen = rng(31)
    x, y = gen.normal(size=(4, 3)), np.array([0, 1, 1, 0])
    for make, step in [
        (lambda m: R.SGD(m, lr=0.1, momentum=0.9, weight_decay=0.01), "sgd"),
        (lambda m: R.Adam(m, lr=0.01, betas=(0.8, 0.99), weight_decay=0.01), "adam"),
    ]:
        model = R.Sequential(R.Linear(3, 2, rng=rng(32)))
        w, b = model[0].weight.copy(), model[0].bias.copy()
        state = {k: (np.zeros_like(a), np.zeros_like(a)) for k, a in (("w", w), ("b", b))}
        opt = make(model)
        for t in range(1, 4):
            model.train_step(x, y, R.cross_entropy, opt)
            _, dl = F.cross_entropy(F.linear_forward(x, w, b), y)
            _, gw, gb = F.linear_backward(x, w, dl)
            for key, p, g in (("w", w, gw), ("b", b, gb)):
                if step == "sgd":
                    F.sgd_step(p, g, state[key][0], 0.1, 0.9, 0.01)
                else:
                    F.adam_step(p, g, *state[key], t, 0.01, 0.8, 0.99, weight_decay=0.01)
        np.testing.assert_allclose(model[0].weight, w, rtol=1e-14, err_msg=step)
        np.testing.assert_allclose(model[0].bias, b, rtol=1e-14, err_msg=step)


def test_frozen_layers_get_no_grads_and_no_updates():
    model = R.Sequential(R.Linear(3, 4, rng=rng(33)), R.ReLU(), R.Linear(4, 2, rng=rng(34)))
    model[0].trainable = False
    before = model[0].weight.copy()
    opt = R.SGD(model, lr=0.5)
    x, y = rng(35).normal(size=(5, 3)), np.array([0, 1, 0, 1, 1])
    model.train_step(x, y, R.cross_entropy, opt)
    assert model[0].grads == {} and model[0].weight_grad is None
    assert model[2].weight_grad is not None and model[2].bias_grad is not None
    np.testing.assert_array_equal(model[0].weight, before)
    # The input gradient still flows through the frozen layer.
    check_module_grads(model, x)
    model.trainable = False
    assert not model.trainable and not model[2].trainable


def test_state_dict_round_trip_and_strictness():
    model = small_cnn(rng(36))
    state = model.state_dict()
    assert list(state)[:6] == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                               "1.running_var"]
    assert "3.bias" not in state and "8.weight" in state
    other = small_cnn(rng(37))
    weight = other[0].weight
    other.load_state_dict({**state, "1.num_batches_tracked": np.array(3)})
    assert other[0].weight is weight  # copied in place: optimizers keep their arrays
    x = rng(38).normal(size=(2, 5, 4, 3))
    np.testing.assert_array_equal(other.predict(x), model.predict(x))
    state["0.weight"][...] = 0  # state_dict returns copies
    assert model[0].weight.any()
    with pytest.raises(KeyError, match="missing"):
        other.load_state_dict({k: v for k, v in state.items() if k != "8.bias"})
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict({**state, "8.bias": np.zeros(4)})


def test_fold_batchnorm_keeps_inference_outputs():
    model = small_cnn(rng(39))
    x = rng(40).normal(size=(4, 5, 4, 3))
    for _ in range(3):
        model.forward(x + rng(41).normal(size=x.shape), training=True)  # move running stats
    folded = R.fold_batchnorm(model)
    assert len(folded) == len(model) - 1
    assert not any(isinstance(layer, R.BatchNorm2d) for layer in folded)
    np.testing.assert_allclose(folded.predict(x), model.predict(x), rtol=1e-10, atol=1e-12)


def test_init_is_pytorch_kaiming_uniform_and_deterministic():
    conv = R.Conv2d(8, 16, 3, groups=2, rng=1)
    bound = 1 / np.sqrt(4 * 3 * 3)  # fan_in counts one group's input channels
    assert conv.weight.shape == (16, 3, 3, 4)
    assert np.abs(conv.weight).max() <= bound and np.abs(conv.weight).max() > 0.9 * bound
    assert np.abs(conv.bias).max() <= bound
    np.testing.assert_array_equal(R.Conv2d(8, 16, 3, groups=2, rng=1).weight, conv.weight)
    R.seed(5)
    a = R.Linear(4, 3).weight
    R.seed(5)
    np.testing.assert_array_equal(R.Linear(4, 3).weight, a)
    assert R.Linear(4, 3, bias=False).bias is None


def test_layer_config_and_backward_before_forward():
    assert R.Conv2d(3, 8, (3, 1), stride=2).config() == {
        "in_channels": 3, "out_channels": 8, "kernel_size": (3, 1), "stride": (2, 2),
        "padding": (0, 0), "groups": 1, "bias": True}
    assert R.Conv1d(3, 8, 5, padding=2).config()["kernel_size"] == 5
    assert R.MaxPool2d(2).config()["stride"] == (2, 2)
    with pytest.raises(RuntimeError, match="before forward"):
        R.Linear(2, 2).backward(np.zeros((1, 2)))


def test_conv2d_32x32x16_forward_and_backward_are_fast():
    gen = rng(42)
    x = gen.normal(size=(8, 32, 32, 16))
    layer = R.Conv2d(16, 16, 3, padding=1, rng=gen)
    dw_layer = R.Conv2d(16, 16, 3, padding=1, groups=16, rng=gen)
    start = time.perf_counter()
    for lay in (layer, dw_layer):
        y = lay.forward(x)
        lay.backward(y)
    elapsed = time.perf_counter() - start
    # ~0.05 s here; the bound is loose so a busy CI machine does not fail it.
    assert elapsed < 1.0, elapsed


def test_layers_match_torch_functional():
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    r = rng(43)

    def t(a):
        return torch.tensor(a, dtype=torch.float64, requires_grad=True)

    def nchw(a):  # channels-last (N, H, W, C) <-> PyTorch's (N, C, H, W)
        return a.permute(0, 3, 1, 2)

    def check(ours, theirs, what):
        # Both float64; summation order differs, so agreement is to a few ulps of the values.
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=what)

    # Conv2d, strided, padded, grouped, non-square: forward and all three gradients.
    x, w, b = r.normal(size=(2, 7, 6, 6)), r.normal(size=(4, 3, 2, 3)), r.normal(size=4)
    tx, tw, tb = t(x), t(w), t(b)
    ty = tf.conv2d(nchw(tx), nchw(tw), tb, stride=(2, 1), padding=(1, 2), groups=2)
    ty = ty.permute(0, 2, 3, 1)
    dy = r.normal(size=ty.shape)
    ty.backward(torch.tensor(dy))
    check(F.conv2d_forward(x, w, b, (2, 1), (1, 2), 2), ty, "conv2d")
    for ours, theirs, what in zip(F.conv2d_backward(x, w, dy, (2, 1), (1, 2), 2),
                                  (tx.grad, tw.grad, tb.grad), "xwb", strict=True):
        check(ours, theirs, f"conv2d d{what}")

    # Conv1d: (N, L, C) and (O, K, I) against PyTorch's (N, C, L) and (O, I, K).
    x, w = r.normal(size=(2, 9, 4)), r.normal(size=(6, 3, 2))
    tx, tw = t(x), t(w)
    ty = tf.conv1d(tx.transpose(1, 2), tw.transpose(1, 2), stride=2, padding=1, groups=2)
    ty = ty.transpose(1, 2)
    dy = r.normal(size=ty.shape)
    ty.backward(torch.tensor(dy))
    check(F.conv1d_forward(x, w, None, 2, 1, 2), ty, "conv1d")
    dx, dw, _ = F.conv1d_backward(x, w, dy, 2, 1, 2)
    check(dx, tx.grad, "conv1d dx")
    check(dw, tw.grad, "conv1d dw")

    # Pooling with padding.
    x = r.normal(size=(2, 7, 5, 3))
    for name, ours_f, ours_b, theirs in [
        ("maxpool2d", F.maxpool2d_forward, lambda dy: F.maxpool2d_backward(x, dy, 3, 2, 1),
         lambda a: tf.max_pool2d(a, 3, 2, 1)),
        ("avgpool2d", F.avgpool2d_forward, lambda dy: F.avgpool2d_backward(x.shape, dy, 3, 2, 1),
         lambda a: tf.avg_pool2d(a, 3, 2, 1, count_include_pad=True)),
    ]:
        tx = t(x)
        ty = theirs(nchw(tx)).permute(0, 2, 3, 1)
        dy = r.normal(size=ty.shape)
        ty.backward(torch.tensor(dy))
        check(ours_f(x, 3, 2, 1), ty, name)
        check(ours_b(dy), tx.grad, f"{name} dx")

    # BatchNorm2d in training mode, including the running statistics.
    x, gamma, beta = r.normal(size=(3, 4, 2, 5)), r.normal(size=5), r.normal(size=5)
    rm, rv = r.normal(size=5), r.uniform(0.5, 2, size=5)
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    tx, tg, tb = t(x), t(gamma), t(beta)
    ty = tf.batch_norm(nchw(tx), trm, trv, tg, tb, training=True, momentum=0.1, eps=1e-5)
    ty = ty.permute(0, 2, 3, 1)
    dy = r.normal(size=ty.shape)
    ty.backward(torch.tensor(dy))
    y, cache = F.batchnorm2d_forward_train(x, gamma, beta, rm, rv)
    check(y, ty, "batchnorm2d")
    for ours, theirs, what in zip(F.batchnorm2d_backward(dy, cache), (tx.grad, tg.grad, tb.grad),
                                  ("dx", "dgamma", "dbeta"), strict=True):
        check(ours, theirs, f"batchnorm2d {what}")
    check(rm, trm, "running_mean")
    check(rv, trv, "running_var")

    # Cross-entropy and MSE with their input gradients.
    logits, labels = r.normal(size=(4, 6)), np.array([5, 0, 2, 2])
    tl = t(logits)
    tloss = tf.cross_entropy(tl, torch.tensor(labels))
    tloss.backward()
    loss, grad = F.cross_entropy(logits, labels)
    check(np.array(loss), tloss, "cross_entropy")
    check(grad, tl.grad, "cross_entropy dlogits")
    target = r.normal(size=(4, 6))
    tl = t(logits)
    tloss = tf.mse_loss(tl, torch.tensor(target))
    tloss.backward()
    loss, grad = F.mse(logits, target)
    check(np.array(loss), tloss, "mse")
    check(grad, tl.grad, "mse dpred")
