"""Seconds per `brats synth` case: template set-up once, then per case the phantom (warp, tumours,
contrasts) and the five NIfTI writes, wall and CPU time side by side.

    python -m bench.synth_speed [--n 5] [--seed 11]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from brats_cli import synth


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = clock()
    return wall - start[0], cpu - start[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()

    start = clock()
    synth.load_anatomy()
    synth.template_image()
    wall, cpu = since(start)
    print(f"set-up (templates, once per process): wall {wall:.2f} s, cpu {cpu:.2f} s")
    totals = [0.0, 0.0, 0.0, 0.0]
    with tempfile.TemporaryDirectory() as folder:
        for index in range(args.n):
            start = clock()
            phantom = synth.make_phantom(args.seed, index)
            make_wall, make_cpu = since(start)
            start = clock()
            synth.write_phantom(phantom, Path(folder))
            write_wall, write_cpu = since(start)
            for slot, value in enumerate((make_wall, make_cpu, write_wall, write_cpu)):
                totals[slot] += value
            print(
                f"{phantom.case_id}: make wall {make_wall:.2f} s cpu {make_cpu:.2f} s | "
                f"write wall {write_wall:.2f} s cpu {write_cpu:.2f} s"
            )
    n = args.n
    print(
        f"mean per case: make wall {totals[0] / n:.2f} s cpu {totals[1] / n:.2f} s | "
        f"write wall {totals[2] / n:.2f} s cpu {totals[3] / n:.2f} s | "
        f"total wall {(totals[0] + totals[2]) / n:.2f} s"
    )


if __name__ == "__main__":
    main()
