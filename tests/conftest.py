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


def autocast_works(device_type, dtype):
    """Whether this torch autocasts to ``dtype`` on ``device_type`` (CPU float16: not in 2.1)."""
    try:
        with torch.autocast(device_type, dtype=dtype):
            pass
    except RuntimeError:
        return False
    return True


@pytest.fixture(autouse=True)
def _skip_autocast_this_torch_lacks(request):
    """A test parametrised with ``dtype``/``dtype_name`` float16 skips where this torch
    cannot autocast to it on the test device, with that reason."""
    params = getattr(getattr(request.node, 'callspec', None), 'params', {})
    dtype = params.get('dtype', params.get('dtype_name'))
    if dtype not in (torch.float16, 'fp16'):
        return
    device_type = os.environ.get('MMPLUG_TEST_DEVICE', 'cpu').split(':')[0]
    if not autocast_works(device_type, torch.float16):
        pytest.skip(f'torch {torch.__version__} has no float16 autocast on {device_type}')


@pytest.fixture(autouse=True)
def _seed_torch():
    """Seed torch's global RNG per test, so a test's draws do not depend on test order."""
    torch.manual_seed(0)
