"""The small parts of a shapes-preset training step, each timed alone (CPU, float32).

    python benchmarks/bench_step_parts.py

Times (best of 30 calls after a warm-up, ms): the optimizer updates (AdamW, SGD) and the
gradient norm over all 80 parameter tensors of ``RetinaNetConfig.shapes()`` (841k values);
group norm forward and backward (32 groups) on the heads' pyramid levels at batch 8, 64
channels, 16x16 down to 1x1; batch norm statistics, forward and backward on the stem's output
(8 x 16 x 64 x 64). These are what the training step spends outside its convolutions
(``bench_model.py`` times the whole step and its layers).
"""

from __future__ import annotations

import os
import time

# As `import retina_np` does (see bench_model.py); set before numpy is loaded.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402


def best_ms(fn, repeat=30) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * min(times)


def main() -> None:
    from retina_np.kernels import cpu
    from retina_np.models import RetinaNet, RetinaNetConfig
    from retina_np.optim import SGD, AdamW, grad_norm

    rng = np.random.default_rng(0)
    model = RetinaNet(RetinaNetConfig.shapes())
    params = model.parameters()
    for p in params:
        p.grad[...] = rng.standard_normal(p.grad.shape) * 1e-3
    print(f"{len(params)} parameter tensors, {sum(p.data.size for p in params)} values")
    for name, opt in (("AdamW", AdamW(model.named_parameters(), lr=1e-6)),
                      ("SGD", SGD(model.named_parameters(), lr=1e-6))):
        print(f"  {name} step over every parameter   {best_ms(opt.step):7.3f} ms")
    print(f"  gradient norm                       {best_ms(lambda: grad_norm(params)):7.3f} ms")

    gamma, beta = np.ones(64, np.float32), np.zeros(64, np.float32)
    for hw in (16, 8, 4, 2, 1):
        x = rng.standard_normal((8, 64, hw, hw)).astype(np.float32)
        _, mean, invstd = cpu.groupnorm_forward(x, gamma, beta, 32, 1e-5)
        fwd = best_ms(lambda x=x: cpu.groupnorm_forward(x, gamma, beta, 32, 1e-5))
        bwd = best_ms(lambda x=x, m=mean, s=invstd: cpu.groupnorm_backward(x, x, m, s, gamma, 32))
        print(f"  group norm 8x64x{hw}x{hw}: forward {fwd:6.3f} ms, backward {bwd:6.3f} ms")

    x = rng.standard_normal((8, 16, 64, 64)).astype(np.float32)
    g16 = np.ones(16, np.float32)
    mean, var = cpu.batchnorm2d_stats(x)
    invstd = (1 / np.sqrt(var + 1e-5)).astype(np.float32)
    print(f"  batch norm 8x16x64x64: statistics {best_ms(lambda: cpu.batchnorm2d_stats(x)):6.3f}"
          f" ms, forward {best_ms(lambda: cpu.batchnorm2d_forward(x, mean, invstd, g16, g16)):6.3f}"
          f" ms, backward {best_ms(lambda: cpu.batchnorm2d_backward(x, x, mean, invstd, g16)):6.3f}"
          " ms")


if __name__ == "__main__":
    main()
