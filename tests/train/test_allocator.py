"""keep_freed_memory: large blocks freed by one step are reused by the next (fewer page faults)."""

import subprocess
import sys

import pytest

from sightwise.train import allocator

# Allocates and frees a 64 MB tensor 30 times, writing every page, and prints the minor
# page faults of the last 10 (the steady state of a training loop). A torch tensor, as in
# training: numpy asks for transparent huge pages, which hides the faults. In a subprocess
# because mallopt changes the whole process.
SCRIPT = """
import resource, sys
import torch
if sys.argv[1] == "keep":
    from sightwise.train.allocator import keep_freed_memory
    assert keep_freed_memory() and keep_freed_memory()  # idempotent
for i in range(30):
    if i == 20:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = torch.ones(8 * 2**20, dtype=torch.float64)
    del a
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    default, kept = _faults("default"), _faults("keep")
    if default < 10_000:  # transparent huge pages back the mapping: few faults to save
        pytest.skip(f"only {default} page faults without the setting on this host")
    # default: a fresh mmap each time, 16 k faults per 64 MB; kept: the freed block is reused
    assert kept < default / 10


def test_it_is_a_no_op_off_linux_or_when_opted_out(monkeypatch):
    allocator.keep_freed_memory.cache_clear()
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False
    allocator.keep_freed_memory.cache_clear()
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    monkeypatch.setenv("SIGHTWISE_KEEP_FREED_MEMORY", "0")
    assert allocator.keep_freed_memory() is False
    allocator.keep_freed_memory.cache_clear()
