"""The tiny model's tensors are small: intra-op threading only adds overhead (and OpenMP spinning
on a loaded 2-core CI machine multiplies CPU time), so these tests run single-threaded and restore
the previous setting afterwards."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
