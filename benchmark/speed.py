"""This machine's measured speed: what the speed benchmarks compute floors from and what the demo
scales its reference timings by."""

from __future__ import annotations

import statistics
import time

import torch


def synced(device: torch.device) -> float:
    """perf_counter once the device's queued work is done (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def seconds_of(fn, device: torch.device, repeats: int = 7, pick=statistics.median) -> float:
    """The median (or `pick`) wall time of `fn` over `repeats` calls, after one untimed call."""
    fn()
    runs = []
    for _ in range(repeats):
        start = synced(device)
        fn()
        runs.append(synced(device) - start)
    return pick(runs)


def matmul_gflops(device: torch.device, repeats: int = 7, pick=statistics.median) -> float:
    """fp32 matmul GFLOP/s on this process's threads or the GPU: an n^3 product, n 1,024 on CPU,
    8,192 on CUDA, which a small one does not fill. With `pick=min`, the fastest of the repeats:
    on 2 CPU cores three calls gave medians of 7 from 146 to 184 GFLOP/s, fastest of 21 from 193 to
    201."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return 2 * n**3 / seconds_of(lambda: a @ b, device, repeats, pick) / 1e9


def throughput(device: torch.device, repeats: int = 7) -> dict[str, float]:
    """`matmul_gflops` and streaming read GB/s (a matrix-vector product over a 256 MB matrix,
    bound by reading it)."""
    big, vector = torch.randn(65536, 1024, device=device), torch.randn(1024, 1, device=device)
    return {"matmul_gflops": matmul_gflops(device, repeats),
            "read_gb_s": 4 * big.numel() / seconds_of(lambda: big @ vector, device, repeats) / 1e9}
