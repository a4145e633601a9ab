"""The last activation of a block whose output a host may modify in place."""
import torch
from torch import nn

__all__ = ['activate']


def activate(act, x):
    """``act(x)``, with ``nn.ReLU`` computed as ``where(x > 0, x, 0)``.

    ReLU's backward reads its output, so a host that adds to the output in place
    (mmdet's ``Bottleneck`` does ``out += identity`` after an ``after_conv3`` plugin)
    breaks backward; ``where`` keeps the mask instead. Same values and gradients.
    """
    if type(act) is nn.ReLU:
        return torch.where(x > 0, x, x.new_zeros(()))
    return act(x)
