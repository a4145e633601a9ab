"""Activations from configs, and the last activation of a block whose output a host may
modify in place."""
import torch
from mmcv.cnn import build_activation_layer
from torch import nn

__all__ = ['activate', 'build_act']


def build_act(act_cfg):
    """The activation ``act_cfg`` describes (mmcv's registry, on a copy of the dict), or
    ``nn.Identity()`` for ``act_cfg=None``."""
    return nn.Identity() if act_cfg is None else build_activation_layer(dict(act_cfg))


def activate(act, x):
    """``act(x)``, with ``nn.ReLU`` computed as ``where(x > 0, x, 0)``.

    ReLU's backward reads its output, so a host that adds to the output in place
    (mmdet's ``Bottleneck`` does ``out += identity`` after an ``after_conv3`` plugin)
    breaks backward; ``where`` keeps the mask instead. Same values and gradients.
    """
    if type(act) is nn.ReLU:
        return torch.where(x > 0, x, x.new_zeros(()))
    return act(x)
