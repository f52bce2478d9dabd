"""ORL stage-2 retrieval at scale: time and peak memory of the chunked cosine kNN.

Synthetic unit vectors (512-d, as resnet18 features) for 10k and 100k images, top-10
neighbours of every image among all. Each size runs in a fresh process so its peak
resident memory (``ru_maxrss``) is its own; the growth over the data itself is reported
next to the N x N float32 matrix a naive retrieval would hold.

    python bench/orl_retrieval_scale.py --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from report import write_section

from domainssl.methods.orl.mining import knn_cosine

DIM, K = 512, 10


def measure(size: int, threads: int) -> dict[str, float]:
    """Time and peak memory growth of one all-to-all top-k retrieval of ``size`` vectors."""
    torch.set_num_threads(threads)
    vectors = torch.nn.functional.normalize(
        torch.randn(size, DIM, generator=torch.Generator().manual_seed(0)), dim=1
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # MiB
    start = time.perf_counter()
    _, index = knn_cosine(vectors, vectors, K, exclude_self=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    assert index.shape == (size, K)
    return {"size": size, "seconds": seconds, "peak_growth_mib": peak - before,
            "data_mib": size * DIM * 4 / 2**20,
            "naive_matrix_mib": size**2 * 4 / 2**20}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--section", default="orl-retrieval-scale")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.threads)))
        return
    rows = []
    for size in args.sizes:
        command = [sys.executable, __file__, "--child", str(size), "--threads", str(args.threads)]
        result = subprocess.run(command, check=True, capture_output=True, text=True)
        row = json.loads(result.stdout.strip().splitlines()[-1])
        print(row, flush=True)
        rows.append(
            f"| {size:,} | {row['seconds']:.1f} | {row['peak_growth_mib']:.0f} | "
            f"{row['data_mib']:.0f} | {row['naive_matrix_mib']:,.0f} |"
        )
    table = "\n".join(
        ["| embeddings | retrieval time (s) | peak memory growth (MiB) | the vectors (MiB) | "
         "N x N float32 matrix (MiB) |", "|---|---|---|---|---|", *rows]
    )  # fmt: skip
    print(table)
    if args.section:
        header = (
            f"## ORL stage-2 retrieval at scale: top-{K} cosine neighbours of every image, "
            f"{DIM}-d synthetic vectors, {args.threads} CPU threads\n\n"
            f"Command: `python bench/orl_retrieval_scale.py --sizes "
            f"{' '.join(map(str, args.sizes))}`\n"
        )
        write_section(args.section, header + "\n" + table)


if __name__ == "__main__":
    main()
