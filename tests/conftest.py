import os

import pytest
import torch


@pytest.fixture(scope='session')
def device():
    """Device of the module tests: ``MMPLUG_TEST_DEVICE`` (default ``cpu``)."""
    name = os.environ.get('MMPLUG_TEST_DEVICE', 'cpu')
    if name.startswith('cuda') and not torch.cuda.is_available():
        pytest.skip(f'MMPLUG_TEST_DEVICE={name} but CUDA is not available')
    return torch.device(name)


@pytest.fixture(autouse=True)
def _seed_torch():
    """Seed torch's global RNG per test, so a test's draws do not depend on test order."""
    torch.manual_seed(0)
