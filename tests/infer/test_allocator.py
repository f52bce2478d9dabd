"""CPU inference keeps freed memory: large blocks are not page-faulted again."""

import subprocess
import sys

import pytest

CHURN = """
import resource
import torch
from domainssl.infer.allocator import keep_freed_memory

def faults_of_churn():
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        block = torch.empty(64 * 2**20 // 4)  # 64 MB: above glibc's largest mmap threshold
        block.fill_(1.0)  # as a layer writes its activations
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

before = faults_of_churn()
assert keep_freed_memory()
faults_of_churn(), faults_of_churn()  # the heap grows to its working size
print(before, faults_of_churn())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_large_blocks_are_reused_not_faulted_again() -> None:
    # in a child process: the setting is process-wide and would outlive this test
    result = subprocess.run(
        [sys.executable, "-c", CHURN], capture_output=True, text=True, check=True
    )
    before, after = map(int, result.stdout.split())
    assert before > 5 * 16_000  # every 64 MB block faults its ~16k pages in again
    assert after < before / 20
