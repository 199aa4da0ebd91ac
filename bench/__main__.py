"""ptlab benchmarks: `python -m bench [--only NAME ...]`.

Every figure is a ratio or a count measured side by side in one run on the
machine at hand, through the same code paths the product uses. Results are
printed as a table and written to bench/results.json. Each case runs with
the torch threads a trial would get at its start (ptlab.resources: the free
cores), unless --threads fixes them, and every figure records the count and
the load it was measured under.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from bench import cases
from ptlab.resources import size_torch_threads

OUT = Path(__file__).resolve().parent / "results.json"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", nargs="*", choices=sorted(cases.CASES), help="run only these cases")
    parser.add_argument("--threads", type=int, help="torch threads of every case (default: sized at each case's start)")
    args = parser.parse_args()
    rows = []
    for name, case in cases.CASES.items():
        if args.only and name not in args.only:
            continue
        # Other jobs may share the cores: every figure carries the load and the threads it was measured under.
        load_before = os.getloadavg()[0]
        if args.threads:
            torch.set_num_threads(args.threads)
        threads = args.threads or size_torch_threads()
        start = time.perf_counter()
        results = case()
        seconds = round(time.perf_counter() - start, 1)
        load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        for result in results if isinstance(results, list) else [results]:
            figure = result.pop("figure", None)
            result.update(case=f"{name}.{figure}" if figure else name, seconds=seconds, load_avg_1min=load, threads=threads)
            rows.append(result)
            print(f"{result['case']:<34} {result['value']:>10} {result['unit']:<10} target {result['target']:<12} "
                  f"{'PASS' if result['met'] else 'MISS'}  {result.get('note', '')}", flush=True)
    previous = json.loads(OUT.read_text()) if OUT.exists() else {"cases": {}}
    previous["cases"].update({r["case"]: r for r in rows})
    previous["machine"] = {"cores": len(os.sched_getaffinity(0)), "platform": platform.platform(), "torch": torch.__version__}
    OUT.write_text(json.dumps(previous, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
