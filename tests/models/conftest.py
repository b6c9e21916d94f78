"""One torch thread for these tests: on a shared 2-core machine, intra-op threads spin against each other and make
small convolutions 10-40x slower."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
