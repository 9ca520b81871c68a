"""Kernels, nothing else: the bottom layer of the package. No module here imports anything from
the rest of ``retina_np`` (tests/test_layering.py checks it); ``retina_np.backend`` is the one
place that chooses between the CPU and the CUDA kernels.

The same kernels exist, under the same names and signatures, up to three times:

* ``reference.py``  plain Python loops, slow and obviously right: the teaching oracle that
  the tests compare everything with (the kernels listed below; it has no twin of the
  utilities that only a fast path needs, see tests/kernels/test_contract.py);
* ``numpy_conv.py`` the convolution as im2col + one GEMM in a few lines of NumPy: the step
  between the loops and the Numba kernels, for learners;
* ``cpu/``          ``@njit`` kernels and BLAS products, fast on a CPU;
* ``cuda/``         ``numba.cuda`` kernels on device arrays, file for file the twins of cpu/.

Beside them: ``levels.py`` (a Joint: every pyramid level in one matrix), ``workspace.py``
(what a convolution's forward keeps for its backward), ``threads.py`` (the thread budget of a
kernel call, and independent tasks side by side), ``sentinels.py`` (the matcher's labels that
the loss kernels read) and ``tunables.py``, every tunable in one record, changed for a while
with ``kernels.options``:

    from retina_np import kernels
    with kernels.options(winograd=False):      # the heads' convolutions by im2col + GEMM
        ...

Every kernel accepts float32 and float64 C-contiguous arrays and returns new arrays of the
input dtype. The letter legend is the package's: N batch, C/F channels in/out, H/W
height/width, kh/kw kernel size, Ho/Wo output size. The contract (shapes on the right):

    conv2d_forward(x, w, b, stride, padding, workspace=None)  # x (N,C,H,W), w (F,C,kh,kw),
                                                          #   b (F,) -> y (N,F,Ho,Wo)
    conv2d_backward_input(dy, w, H, W, stride, padding)   # dy (N,F,Ho,Wo) -> dx (N,C,H,W)
    conv2d_backward_weight(dy, x, kh, kw, stride, padding, workspace=None)  # -> dw (F,C,kh,kw)
                                                          #   workspace: the forward's
                                                          #   ConvWorkspace (CPU; CUDA: unused)
    bias_backward(dy)                                     # (N,F,Ho,Wo) -> db (F,)
    batchnorm2d_stats(x)                                  # -> mean (C,), var (C,) biased
    batchnorm2d_update_stats(mean, var, count, running_mean, running_var, momentum, eps)
                                                          # count = N*H*W >= 2 -> invstd (C,);
                                                          #   running stats updated in place
    batchnorm2d_eval_stats(running_mean, running_var, eps)  # -> mean copy (C,), invstd (C,)
    batchnorm2d_forward(x, mean, invstd, gamma, beta, relu=False)
                                                          # -> y = (x-mean)*invstd*gamma+beta
    batchnorm2d_backward(dy, x, mean, invstd, gamma, y=None)  # training mode -> dx, dgamma,
                                                          #   dbeta; y: a relu forward's output
    groupnorm_forward(x, gamma, beta, groups, eps, relu=False)  # G = groups of C/G channels -> y,
                                                          #   mean (N,G), invstd (N,G)
    groupnorm_backward(dy, x, mean, invstd, gamma, groups)  # -> dx, dgamma (C,), dbeta (C,)
    relu_forward(x)                                       # -> y
    relu_backward(dy, y)                                  # -> dx = dy * (y > 0)
    maxpool2d_forward(x, k, stride, padding)              # -> y (N,C,Ho,Wo), argmax (int64, h*W+w)
    maxpool2d_backward(dy, argmax, H, W)                  # -> dx (N,C,H,W)
    upsample_nearest_forward(x, Ho, Wo)                   # src = floor(dst * H / Ho) -> y
    upsample_nearest_backward(dy, H, W)                   # -> dx (N,C,H,W)
    add_forward(a, b)                                     # -> a + b

The norms' forwards take the ReLU that follows them: ``relu=True`` returns max(y, 0). The
heads apply one convolution to every pyramid level: ``join_levels(levels, kernel_size=None)``
makes one ``levels.Joint`` of the list of levels on the CPU (the list itself on CUDA, and on
the CPU where the matrix would be too large), ``split_levels`` gives the list back, and

    conv2d_forward_levels(xs, w, b, stride, padding)      # xs: list of (N,C,H_l,W_l), per level
    conv2d_backward_levels(dys, xs, w, stride, padding, has_bias, need_input_grad)
    conv2d_forward_joint(xj, w, b, workspace=None)        # CPU: "same" conv, Joint (C,T) -> (F,T)
    conv2d_backward_joint(dyj, xj, w, has_bias, need_input_grad, workspace=None,
                          need_weight_grad=True)          # -> dx Joint or None, dw, db or None
    groupnorm_forward_joint / groupnorm_backward_joint    # CPU: group norm of a Joint

The optimizer, the heads' layout and the loss use (both backends): ``empty_like``,
``zeros_like``, ``fill_``, ``scale_``, ``add_inplace_``, ``sgd_update_``, ``adamw_update_``,
``sum_squares``, ``levels_to_rows``, ``rows_to_levels``, ``levels_layout``,
``focal_loss_anchor_classes``, ``box_loss_rows``, ``sigmoid_focal_loss``, ``smooth_l1_loss``,
``l1_loss``; and detection: ``box_iou``, ``decode_boxes``, ``nms``, ``batched_nms``.
"""

from retina_np.kernels.tunables import Options, options

__all__ = ["Options", "options"]
