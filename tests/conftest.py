import os
import sys

import torch

# Tiny models run fastest on one thread, and a second thread stalls badly when the other core is busy.
torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(__file__))


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every test starts on one torch thread: a test that runs `csd` in-process (`--threads 2`) or a
    notebook's `setup()` raises it, and two workers with two spinning threads each on 2 cores run the
    rest of that worker's tests several times slower (a suite went from 12 to 38 minutes)."""
    torch.set_num_threads(1)
    yield
