"""The benchmarks' CPU peak-memory reading must not depend on what ran before it in the process."""

import torch

from benchmarks.common import peak_memory


def _allocate_and_free() -> list[torch.Tensor]:
    """128 MiB in 64 KiB tensors (under glibc's mmap threshold, so freeing keeps them in the heap), freed
    behind a few small live tensors that pin the heap's top."""
    pieces = [torch.ones(128, 128) for _ in range(2000)]
    pinned = [torch.ones(8) for _ in range(50)]
    del pieces
    return pinned


def test_a_second_run_in_the_same_process_reads_the_same_peak() -> None:
    live = []
    readings = []
    for _ in range(2):
        with peak_memory("cpu") as memory:
            live.append(_allocate_and_free())
        readings.append(memory["peak_mib"])
    assert readings[0] > 64
    assert readings[1] > 0.5 * readings[0], readings  # without releasing the freed heap: ~0 MiB
