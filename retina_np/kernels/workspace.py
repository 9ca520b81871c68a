"""What a convolution's forward keeps for its backward: one typed record.

The caller (``ops.conv2d_forward`` in training) passes an empty ``ConvWorkspace``; the CPU
forward fills it, and the backward reads it: the plan says which algorithm ran, so the
weight gradient takes the same way and reuses what was kept instead of unfolding or
transforming the input a second time. The CUDA kernels keep nothing (their implicit GEMM
builds no matrix) and leave it empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ConvWorkspace:
    # The forward's ConvPlan (kernels/cpu/plan.py); None until a forward ran.
    plan: object = None
    # im2col: the unfolded input, one (C*kh*kw, L) matrix per tile of the output; empty when
    # the input was too large to keep (options.keep_max_elements) or the plan needs none.
    columns: list = field(default_factory=list)
    # im2col of a strided or padded input whose columns were not kept: the padded input cut
    # into its stride phases (cpu/im2col.py ``phases``), unfolded again by the weight gradient.
    phases: object = None
    # Winograd: V ((m + 2)^2, C, P), the transformed input, for the weight gradient.
    transformed: object = None
    # Winograd: U ((m + 2)^2, F, C), the transformed filters, for the input gradient.
    transformed_filters: object = None
    # Winograd: (dy, dM), the transformed output gradient that the input-gradient call made,
    # for the weight-gradient call with the same dy (at once, or queued for later).
    output_gradient: tuple | None = None
