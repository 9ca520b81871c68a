"""benchmarks/bench_products.py times every product it names, in both of the stem's layouts
and the heads' three products hot and cold, and says which BLAS ran them."""

import re

from _scripts import run_benchmark


def test_products_prints_a_rate_for_every_product():
    out = run_benchmark("bench_products", "--repeat", "3")
    rows = re.findall(r"^(\S.+?)\s+(\d+\.\d)\s+(\d+\.\d)$", out, re.MULTILINE)
    names = [name for name, _, _ in rows]
    assert names[0] == "stem tile (16x147)@(147x2048), one product", out
    assert names[1:5] == [f"stem tile as {2048 // b} bands of {b} columns"
                          for b in (64, 128, 256, 512)]
    heads = [f"heads {way}, {state}"
             for way in ("forward U @ V", "weight grad dM @ V^T, V's transposed view",
                         "weight grad dM @ V^T, V^T contiguous")
             for state in ("hot", "cold")]
    assert names[5:] == heads
    assert all(float(us) > 0 and float(rate) > 0 for _, us, rate in rows)
    assert out.startswith("BLAS: ")
