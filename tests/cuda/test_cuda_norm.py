"""Group norm on the GPU (kernels/cuda/norm.py) against kernels.cpu: several blocks per group
and per plane (the tiny launch settings of conftest.py), then the op pair and the layer on
device arrays."""

import numpy as np
import pytest
from cuda_helpers import assert_close, host, to_dev

from retina_np import backend, ops
from retina_np.kernels import cpu
from retina_np.kernels import cuda as kcuda
from retina_np.kernels.cuda import reduce as cuda_reduce
from retina_np.nn import GroupNorm


def test_several_blocks_per_group_and_per_plane(small_launches):
    """The shapes below really split each reduction over several blocks."""
    assert cuda_reduce._chunks(C=2 * 3, M=2 * 4 * 5) > 1  # forward: (N*G, Cg*H*W)
    assert cuda_reduce._chunks(C=2 * 6, M=4 * 5) > 1  # backward: (N*C, H*W)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, groups", [((2, 6, 4, 5), 3), ((3, 4, 1, 1), 2),
                                           ((1, 3, 3, 2), 1)])
def test_groupnorm_kernels(small_launches, rng, shape, groups, dtype):
    C = shape[1]
    x = (3 + 2 * rng.standard_normal(shape)).astype(dtype)  # a mean far from 0
    gamma = rng.uniform(0.5, 1.5, C).astype(dtype)
    beta = rng.standard_normal(C).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    got = kcuda.groupnorm_forward(to_dev(x), to_dev(gamma), to_dev(beta), groups, 1e-5)
    want = cpu.groupnorm_forward(x, gamma, beta, groups, 1e-5)
    for g, w in zip(got, want):
        assert g.dtype == dtype and g.shape == w.shape
        assert_close(host(g), w, dtype, scale=10)
    mean, invstd = want[1], want[2]  # the same statistics for both backwards
    got = kcuda.groupnorm_backward(*(to_dev(a) for a in (dy, x, mean, invstd, gamma)), groups)
    want = cpu.groupnorm_backward(dy, x, mean, invstd, gamma, groups)
    for g, w in zip(got, want):
        assert g.dtype == dtype and g.shape == w.shape
        assert_close(host(g), w, dtype, scale=10)


def test_groupnorm_op_and_layer_on_device(small_launches, rng):
    """The layer on two pyramid levels, on the device and on the host: same outputs, input
    gradients and accumulated parameter gradients."""
    levels = [rng.standard_normal((2, 4, s, s)).astype(np.float32) for s in (3, 1)]
    grads = [rng.standard_normal(x.shape).astype(np.float32) for x in levels]
    on_host, on_device = GroupNorm(2, 4), GroupNorm(2, 4).to("cuda")
    for layer in (on_host, on_device):
        layer.weight.data = backend.to_device(np.linspace(0.5, 1.5, 4, dtype=np.float32),
                                              backend.device_of(layer.weight.data))
    ys = [on_host(x) for x in levels]
    ys_d = [on_device(to_dev(x)) for x in levels]
    dxs = [on_host.backward(g) for g in reversed(grads)]
    dxs_d = [on_device.backward(to_dev(g)) for g in reversed(grads)]
    for got, want in zip(ys_d + dxs_d, ys + dxs):
        assert backend.is_device_array(got)
        assert_close(host(got), want, scale=10)
    for p, p_d in zip(on_host.parameters(), on_device.parameters()):
        assert_close(host(p_d.grad), p.grad, scale=10)
    with pytest.raises(ValueError, match="cannot be split into 3 groups"):
        ops.groupnorm_forward(to_dev(levels[0]), to_dev(np.ones(4, np.float32)),
                              to_dev(np.zeros(4, np.float32)), 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_groupnorm_with_the_relu_after_it(small_launches, rng, dtype):
    x = rng.standard_normal((2, 6, 4, 5)).astype(dtype)
    gamma, beta = rng.uniform(0.5, 1.5, 6).astype(dtype), rng.standard_normal(6).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    got = kcuda.groupnorm_forward(to_dev(x), to_dev(gamma), to_dev(beta), 3, 1e-5, True)
    want = cpu.groupnorm_forward(x, gamma, beta, 3, 1e-5, relu=True)
    for g, w in zip(got, want):
        assert_close(host(g), w, dtype, scale=10)
    assert 0 < (want[0] > 0).mean() < 1
    # the op pair on the device: the ReLU's backward, then the norm's
    _, cache = ops.groupnorm_forward(x, gamma, beta, 3, relu=True)
    _, cache_d = ops.groupnorm_forward(to_dev(x), to_dev(gamma), to_dev(beta), 3, relu=True)
    for g, w in zip(ops.groupnorm_backward(to_dev(dy), cache_d), ops.groupnorm_backward(dy, cache)):
        assert_close(host(g), w, dtype, scale=10)
