"""The gradient checker passes right gradients and catches wrong ones."""

import numpy as np
import pytest

from retina_np import ops
from retina_np.gradcheck import gradcheck, gradcheck_op, numerical_gradient, relative_error


def conv_pair(stride=2, padding=1):
    def forward(x, w, b):
        return ops.conv2d_forward(x, w, b, stride, padding)

    return forward, ops.conv2d_backward


def conv_inputs(rng):
    return {"x": rng.standard_normal((2, 3, 6, 5)), "w": rng.standard_normal((4, 3, 3, 3)),
            "b": rng.standard_normal(4)}


def test_right_gradient_passes(rng):
    report = gradcheck_op(*conv_pair(), conv_inputs(rng), eps=1e-4)
    assert report.worst < 1e-7
    assert set(report.results) == {"x", "w", "b"}
    assert report.results["x"].checked == 2 * 3 * 6 * 5


@pytest.mark.parametrize("bug", ["scaled", "transposed_kernel", "missing_bias", "one_entry"])
def test_wrong_gradient_is_caught(bug, rng):
    forward, backward = conv_pair()

    def buggy_backward(dy, cache):
        dx, dw, db = backward(dy, cache)
        if bug == "scaled":
            dw = dw * 1.01
        elif bug == "transposed_kernel":
            dw = dw.transpose(0, 1, 3, 2).copy()
        elif bug == "missing_bias":
            db = np.zeros_like(db)
        elif bug == "one_entry":
            dx = dx.copy()
            dx[1, 2, 3, 4] += 0.5
        return dx, dw, db

    report = gradcheck_op(forward, buggy_backward, conv_inputs(rng), eps=1e-4)
    assert report.worst > 1e-3, str(report)


def test_sampled_entries_still_catch_a_bug(rng):
    forward, backward = conv_pair()
    inputs = conv_inputs(rng)

    def half_dx(dy, cache):
        dx, dw, db = backward(dy, cache)
        return dx * 0.5, dw, db

    report = gradcheck_op(forward, half_dx, inputs, eps=1e-4, num_samples=5)
    assert report.results["x"].checked == 5 and report.results["b"].checked == 4
    assert report.results["x"].worst > 0.4
    assert report.results["w"].worst < 1e-7


def test_plain_function_and_explicit_indices():
    """gradcheck on a hand-written loss: L = sum(sin(a) * b**2)."""
    rng = np.random.default_rng(1)
    inputs = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}

    def f(inp):
        return float(np.sin(inp["a"]).sum() * (inp["b"] ** 2).sum())

    grads = {"a": np.cos(inputs["a"]) * (inputs["b"] ** 2).sum(),
             "b": 2 * inputs["b"] * np.sin(inputs["a"]).sum()}
    before = {k: v.copy() for k, v in inputs.items()}
    report = gradcheck(f, inputs, grads, eps=1e-6, indices={"a": [0, 5, 11]})
    assert report.worst < 1e-6, str(report)
    assert report.results["a"].checked == 3 and report.results["b"].checked == 5
    for k in inputs:  # perturbations are undone exactly
        np.testing.assert_array_equal(inputs[k], before[k])
    text = str(report)
    assert "worst relative error" in text and "a" in text and "(3, 4)" in text


def test_numerical_gradient_of_a_quadratic():
    x = np.array([1.0, -2.0, 3.0])
    n = numerical_gradient(lambda inp: float((inp["x"] ** 2).sum()), {"x": x}, "x", [0, 1, 2])
    np.testing.assert_allclose(n, 2 * x, rtol=1e-9)


def test_relative_error_floor():
    """Entries far below the largest gradient are measured against floor_rel * largest."""
    err = relative_error([1.0, 1e-9, 0.0], [1.0 + 1e-8, 2e-9, 0.0], floor_rel=1e-3)
    np.testing.assert_allclose(err, [1e-8 / (1 + 1e-8), 1e-9 / 1e-3, 0.0], rtol=1e-6)
    assert relative_error([0.0], [1.0])[0] == 1.0  # a gradient that should not be 0
    assert relative_error([0.0, 0.0], [0.0, 0.0]).max() == 0.0


def test_float32_inputs_are_refused():
    with pytest.raises(ValueError, match="float64"):
        gradcheck(lambda inp: 0.0, {"x": np.ones(3, np.float32)}, {"x": np.zeros(3)})


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shape"):
        gradcheck(lambda inp: 0.0, {"x": np.ones(3)}, {"x": np.zeros(4)})


@pytest.mark.parametrize("form", ["tuple", "dict", "dict_without"])
def test_a_missing_gradient_fails_the_check(form, rng):
    # A backward that forgets the bias gradient must not pass by leaving the bias unchecked.
    forward, backward = conv_pair()

    def no_db(dy, cache):
        dx, dw, _ = backward(dy, cache)
        if form == "tuple":
            return dx, dw, None
        if form == "dict":
            return {"x": dx, "w": dw, "b": None}
        return {"x": dx, "w": dw}

    report = gradcheck_op(forward, no_db, conv_inputs(rng), eps=1e-4)
    assert report.worst == np.inf
    assert report.results["b"].checked == 0 and report.results["x"].worst < 1e-7
    assert "no gradient" in str(report)


def test_checking_nothing_is_refused(rng):
    with pytest.raises(ValueError, match="no gradient to check"):
        gradcheck(lambda inp: 0.0, {"x": rng.standard_normal(3)}, {})


def test_rounding_of_the_loss_is_not_counted_but_a_wrong_tiny_gradient_is():
    """An input whose gradients are all tiny beside a large loss: central differences cannot
    resolve them better than a few ulps of the loss over eps, and that part of the error is
    not counted; a gradient off by 10% still fails."""
    offset = 1000.0  # the loss's size; the checked input moves it by ~1e-5 per unit
    x = np.array([0.3, -0.7])
    slope = np.array([8.7e-6, -3.1e-6])

    def f(inp):
        return offset + float(slope @ inp["x"])

    ok = gradcheck(f, {"x": x}, {"x": slope}, eps=1e-5)
    assert ok.worst <= 1e-5, str(ok)
    wrong = gradcheck(f, {"x": x}, {"x": slope * 1.1}, eps=1e-5)
    assert wrong.worst > 0.05, str(wrong)
