"""Stand-in for a layer whose mmcv op is not compiled into this mmcv."""
from torch import nn

from mmplug.registry import MODELS


def missing_ops_layer(name, import_error):
    """Register ``name`` as a class that raises, at build time, why it is missing.

    A config that asks for the layer then fails with how to fix the install,
    not with a registry ``KeyError`` that hides the cause.
    """

    def __init__(self, *args, **kwargs):
        raise ImportError(
            f'{name} needs mmcv built with its ops, but importing mmcv.ops failed: '
            f'{import_error}. Build mmcv with MMCV_WITH_OPS=1 and without build '
            'isolation (see README.md, "Setup"), or run `make setup`.')

    cls = type(name, (nn.Module,), {'__init__': __init__, '__module__': __name__})
    return MODELS.register_module(module=cls)
