"""The shapes preset's training step under other kernel options or environments, in
alternating processes.

    python benchmarks/bench_options.py "" "serial_max_elements=65536"        # 6 runs of each
    python benchmarks/bench_options.py --runs 4 "" "cols_max_columns=1024" "env:GOMP_SPINCOUNT=0"

Each argument is one variant: comma-separated ``name=value`` pairs of ``kernels.options``
(``retina_np/kernels/tunables.py``; integers, or True / False), ``env:NAME=value`` pairs set
in the process's environment before it starts (for the settings a library reads at load:
OpenMP's, OpenBLAS's), or ``""`` for the defaults; the first variant is the baseline. Every run
is ``bench_model.py``'s ``bench_train`` (20 timed steps, SGD) in a fresh process under that
variant; the variants take turns, the order reversed in every other round, so that all of
them see the machine's slow and fast spells alike (``bench_versus.py`` does the same for two
checkouts). Prints each round, then per variant the median step, how many of its runs beat
the baseline's run of the same round, and the median of each stage.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from statistics import median

HERE = Path(__file__).resolve().parent


def _parse(variant: str) -> tuple[dict, dict]:
    """A variant string -> (kernel options, environment changes)."""
    options, env = {}, {}
    for pair in filter(None, (p.strip() for p in variant.split(","))):
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"not name=value: {pair!r}")
        if name.startswith("env:"):
            env[name[4:]] = value
        elif value in ("True", "False"):
            options[name] = value == "True"
        else:
            try:
                options[name] = int(value)
            except ValueError:
                raise SystemExit(f"{name}: an integer, True or False, got {value!r}") from None
    return options, env


def _worker(variant: str) -> None:
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as `import retina_np`, before numpy
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent))
    import bench_model

    from retina_np import kernels

    with kernels.options(**_parse(variant)[0]):
        result = bench_model.bench_train(20)
    print(json.dumps({"step": result["seconds_per_step"], "stages": result["per_stage_seconds"]}))


def _run(variant: str) -> dict:
    env = {**os.environ, **_parse(variant)[1]}
    done = subprocess.run([sys.executable, __file__, "--worker", variant], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"variant {variant!r} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", help='e.g. "" "serial_max_elements=65536"')
    parser.add_argument("--runs", type=int, default=6, help="rounds of all the variants")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.variants[0])
        return
    if len(args.variants) < 2:
        parser.error("give the baseline and at least one other variant")
    sys.path.insert(0, str(HERE.parent))
    from retina_np import kernels

    for variant in args.variants:  # unknown option names fail here, before any run
        try:
            with kernels.options(**_parse(variant)[0]):
                pass
        except (TypeError, ValueError) as error:
            parser.error(f"variant {variant!r}: {error}")
    runs = {v: [] for v in args.variants}
    for r in range(args.runs):
        order = args.variants if r % 2 == 0 else args.variants[::-1]
        for variant in order:
            runs[variant].append(_run(variant))
        print(f"round {r + 1}: " + ", ".join(f"{v or 'defaults'} {1e3 * runs[v][-1]['step']:.1f} ms"
                                            for v in args.variants), flush=True)
    base = [run["step"] for run in runs[args.variants[0]]]
    print(f"\nstep of the shapes preset (batch 8, SGD), medians of {args.runs} runs:")
    for variant in args.variants:
        steps = [run["step"] for run in runs[variant]]
        wins = sum(s < b for s, b in zip(steps, base))
        print(f"  {variant or 'defaults':40s} {1e3 * median(steps):6.2f} ms"
              + ("" if variant == args.variants[0] else
                 f"   faster than the baseline in {wins} of {args.runs} rounds"))
        for stage in runs[variant][0]["stages"]:
            value = median([run["stages"][stage] for run in runs[variant]])
            print(f"      {stage:48s} {1e3 * value:6.2f} ms")


if __name__ == "__main__":
    main()
