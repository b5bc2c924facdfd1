import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _two_threads():
    # The machines (and the fixture reference) run with 2 threads.
    torch.set_num_threads(2)
