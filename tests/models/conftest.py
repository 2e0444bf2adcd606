import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    """One intra-op thread: on the shared 2-core box, two threads contend with other jobs and run 3-10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
