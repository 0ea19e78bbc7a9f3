"""Torch's intra-op threads for the data path's small tensors."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def one_intra_op_thread():
    """Run the block's torch ops on one thread. The data path's tensors are small (a step's frames,
    a batch's row indices), and handing each op to a team of threads can cost far more than the op
    itself on a busy machine (docs/benchmarks.md, "Figures behind design choices"). The update, and a
    batch's frame gather, keep every thread."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
