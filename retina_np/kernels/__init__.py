"""Numba kernels, nothing else: no classes, no model logic.

Three files hold the same kernels under the same names and signatures:

* ``reference.py`` -- plain Python loops, slow and obviously right (the teaching oracle);
* ``cpu.py``       -- ``@njit`` versions, fast on a CPU (the heads' 3x3 convolutions, and the
  backbone's on one thread, by Winograd's F(4x4, 3x3), ``winograd.py``: the same results up
  to rounding);
* ``cuda.py``      -- ``numba.cuda`` versions taking and returning device arrays.

Only ``retina_np.backend`` chooses between them. Every kernel accepts float32 and float64
C-contiguous arrays and returns new arrays of the input dtype. The letter legend is the
package's: N batch, C/F channels in/out, H/W height/width, kh/kw kernel size, Ho/Wo output size.

The kernels (shapes in the comments):

    conv2d_forward(x, w, b, stride, padding, columns=None)  # x (N,C,H,W), w (F,C,kh,kw),
                                                          #   b (F,) -> y (N,F,Ho,Wo)
    conv2d_backward_input(dy, w, H, W, stride, padding)   # dy (N,F,Ho,Wo) -> dx (N,C,H,W)
    conv2d_backward_weight(dy, x, kh, kw, stride, padding, columns=None)  # -> dw (F,C,kh,kw)
                                                          #   columns: a list in which cpu.py's
                                                          #   forward keeps its unfolded x for
                                                          #   the weight gradient (others: unused)
    bias_backward(dy)                                     # (N,F,Ho,Wo) -> db (F,)
    batchnorm2d_stats(x)                                  # -> mean (C,), var (C,) biased
    batchnorm2d_update_stats(mean, var, count, running_mean, running_var, momentum, eps)
                                                          # count = N*H*W >= 2 -> invstd (C,);
                                                          #   running stats updated in place
    batchnorm2d_eval_stats(running_mean, running_var, eps)  # -> mean copy (C,), invstd (C,)
    batchnorm2d_forward(x, mean, invstd, gamma, beta, relu=False)
                                                          # -> y = (x-mean)*invstd*gamma+beta
    batchnorm2d_backward(dy, x, mean, invstd, gamma)      # training mode -> dx, dgamma, dbeta
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

The norms' forwards take the ReLU that follows them: ``relu=True`` returns max(y, 0), in the
same pass over the array on the CPU (``nn.BatchNorm2d(..., relu=True)``,
``nn.GroupNorm(..., relu=True)``); the ops run the ReLU's backward before the norm's.

The heads apply one convolution to every pyramid level, so ``cpu.py`` and ``cuda.py`` also
have the two functions below (``reference.py`` does not: they equal its single-input kernels
applied level by level, which is what ``levels.py`` does for any kernel module, and what the
tests compare with):

    conv2d_forward_levels(xs, w, b, stride, padding, columns=None)  # xs: list of (N,C,H_l,W_l)
                                                          #   -> list of y_l (N,F,Ho_l,Wo_l)
    conv2d_backward_levels(dys, xs, w, stride, padding, has_bias, need_input_grad,
                           columns=None)                  # -> dxs (list) or None, dw, db or
                                                          #   None (summed over the levels)

In-place utilities for the optimizer and gradient accumulation (each returns its first
argument): ``zeros_like(a)``, ``fill_(a, value)``, ``scale_(a, s)``, ``add_inplace_(a, b)``,
``sgd_update_(param, grad, buf, lr, momentum, weight_decay)``.

The heads keep their activations as one ``levels.Joint`` on the CPU: ``join_levels(levels,
kernel_size=None)`` makes one from the list of levels (``cuda.py``: the list itself, as it
does when the matrix would be too large) and ``split_levels`` gives the list back;
``levels_layout(levels)`` is what ``rows_to_levels`` needs to rebuild either. ``cpu.py``'s
layers on a Joint (only those):

    conv2d_forward_joint(xj, w, b, columns=None)          # "same" conv: Joint (C,T) -> (F,T)
                                                          #   (3x3: Winograd, winograd.py)
    conv2d_backward_joint(dyj, xj, w, has_bias, need_input_grad, columns=None)
                                                          # -> dx Joint or None, dw, db or None
    groupnorm_forward_joint(xj, gamma, beta, groups, eps, relu=False)  # -> y Joint, mean, invstd
                                                          #   (levels*N, G)
    groupnorm_backward_joint(dyj, xj, mean, invstd, gamma, groups)  # -> dx Joint, dgamma, dbeta

``side_by_side(*tasks, channels=0)`` calls independent pieces of work (the heads' two
subnets, whose convolutions are ``channels`` wide) and returns their results in order:
``cpu.py`` runs narrow ones at the same time, each on its share of the cores
(``threads.py``), ``cuda.py`` one after another, as their launches queue anyway. Outside
such tasks, ``cpu.py``'s kernels that split their work over the cores (the convolutions,
batch norm, max pooling) run on one thread when their input is small
(``threads.serial_when_small``, below ``threads.SERIAL_MAX_ELEMENTS``): the backbone's
forward from its second stage on.
"""
