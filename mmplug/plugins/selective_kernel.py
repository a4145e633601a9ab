"""Selective Kernel (SK) unit.

Li, Wang, Hu, Yang. "Selective Kernel Networks", CVPR 2019.
https://arxiv.org/abs/1903.06586

Neurons choose their receptive field by a softmax over ``M`` paths (Sec. 3.1)::

    U_m = ReLU(BN(conv_m(x)))        grouped 3x3 conv, dilation m (5x5 = 3x3, d 2)
    z   = ReLU(BN(W GAP(sum_m U_m))) W: C -> d, d = max(C / r, L)
    V   = sum_m softmax_m(A_m z) * U_m

Defaults are SKNet's (``M = 2``, ``G = 32``, ``r = 16``, ``L = 32``); ``W`` and
``A_m`` are bias-free. Init: the selection FCs ``A_m`` (``fc_select``) are
Gaussian with std 0.01, as the authors' Caffe model, so every path starts at
about ``1/M``; He normal (fan-out) convs elsewhere, BN 1/0. Not the identity at
init: the output is new batch-normalised features.

Deviations:

* The paper's SK unit replaces the 3x3 conv of a ResNeXt bottleneck; as a
  plugin it is an extra unit after it (``position='after_conv2'``).
* Its BatchNorms follow the plugin's own train/eval mode, not the host's
  ``norm_eval`` (``mmplug.layers.norm_mode``); inside a ``frozen_stages``
  stage the plugin is frozen at its init.
* Under autocast the ``[N, C]`` selection path runs in float32: BN over pooled
  descriptors amplifies bf16/fp16 rounding.

fightingcv-attention's ``SKAttention`` computes this function with kernels
(3, 5), ``group=G``, zero biases, a 5x5 kernel holding the dilated taps and a
positive ``W`` output (the tests check it).
"""
import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule, constant_init, kaiming_init, normal_init

from mmplug.layers import (
    check_cfg,
    check_divisible,
    check_input,
    check_int,
    check_int_tuple,
    follow_module_mode,
    reduced_channels,
)
from mmplug.registry import MODELS


@MODELS.register_module()
class SK(BaseModule):
    """Selective Kernel plugin (shape preserving, ``C -> C``).

    Args:
        in_channels (int): Channels of the input, divisible by ``groups``.
        dilations (tuple[int]): Dilation of each path's 3x3 conv (``M`` >= 2
            paths). Defaults to (1, 2).
        groups (int): Groups ``G`` of the path convs. Defaults to 32.
        rd_ratio (float): ``1 / r``. Defaults to 1/16.
        rd_channels (int, optional): Explicit ``d``; overrides ``rd_ratio`` and
            ``min_channels``. Defaults to None.
        rd_divisor (int): Round ``C / r`` to a multiple of this. Defaults to 1.
        min_channels (int): The paper's ``L``. Defaults to 32.
        conv_cfg (dict, optional): Config of the path convs. Defaults to None.
        norm_cfg (dict): Norm after each path conv and ``W``. Defaults to
            ``dict(type='BN')``.
        act_cfg (dict): Activation after those. Defaults to ``dict(type='ReLU')``.
        init_cfg (dict | list[dict], optional): mmengine init config; the
            unit's init is re-applied by ``init_weights()``. Defaults to None.

    Note:
        In training mode, BN on ``z`` needs more than one image per batch.

    Example:
        >>> import torch
        >>> from mmplug.plugins.selective_kernel import SK
        >>> sk = SK(in_channels=256)
        >>> sk(torch.randn(2, 256, 28, 28)).shape
        torch.Size([2, 256, 28, 28])

        In an mmdet/mmseg ResNet config (``in_channels`` = planes there)::

            plugins=[dict(cfg=dict(type='SK'), stages=(False, True, True, True),
                          position='after_conv2')]
    """

    _abbr_ = 'sk'
    #: The paper's placement, filled in by the tools for the short plugin form.
    default_position = 'after_conv2'

    def __init__(self,
                 in_channels,
                 dilations=(1, 2),
                 groups=32,
                 rd_ratio=1 / 16,
                 rd_channels=None,
                 rd_divisor=1,
                 min_channels=32,
                 conv_cfg=None,
                 norm_cfg=dict(type='BN'),
                 act_cfg=dict(type='ReLU'),
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        for name, value in (('in_channels', in_channels), ('groups', groups),
                            ('min_channels', min_channels)):
            check_int('SK', name, value)
        check_divisible('SK', 'in_channels', in_channels, 'groups', groups)
        dilations = check_int_tuple('SK', 'dilations', dilations, 'one per path', min_len=2)
        for name, value in (('conv_cfg', conv_cfg), ('norm_cfg', norm_cfg),
                            ('act_cfg', act_cfg)):
            check_cfg('SK', name, value)
        self.in_channels = in_channels
        self.dilations = dilations
        self.groups = groups
        self.rd_channels = reduced_channels('SK', in_channels, rd_ratio, rd_channels, rd_divisor,
                                            min_channels)
        self.paths = nn.ModuleList([
            ConvModule(in_channels, in_channels, 3, padding=d, dilation=d, groups=groups,
                       conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
            for d in self.dilations
        ])
        # W: C -> d (+BN+ReLU), as a 1x1 conv on the pooled [N, C, 1, 1] map.
        self.fc_reduce = ConvModule(in_channels, self.rd_channels, 1, bias=False,
                                    norm_cfg=norm_cfg, act_cfg=act_cfg)
        # A_1..A_M stacked: d -> M*C, path-major.
        self.fc_select = nn.Conv2d(self.rd_channels, len(self.dilations) * in_channels, 1,
                                   bias=False)
        # Not init_weights(): mmengine would then skip it after the host's init_cfg.
        self._reset_parameters()

    def init_weights(self):
        """He normal convs, ``A_m`` with std 0.01, BN 1/0, after the host's ``init_cfg``."""
        super().init_weights()
        self._reset_parameters()

    def _reset_parameters(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                kaiming_init(m, mode='fan_out', nonlinearity='relu', bias=0)
            elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
                constant_init(m, 1, bias=0)
        # The authors' Caffe model: every path starts at a weight of about 1 / M.
        normal_init(self.fc_select, std=0.01)

    def forward(self, x):
        check_input('SK', x, self.in_channels)
        follow_module_mode(self)
        n, c, h, w = x.shape
        m = len(self.dilations)
        # One grouped conv per path (docs/performance.md).
        feats = [path(x) for path in self.paths]  # M x [N, C, H, W]
        # The selection path runs in the parameters' dtype (float32 under autocast).
        with torch.autocast(device_type=x.device.type, enabled=False):
            # GAP(sum_m U_m) as the sum of the paths' means.
            dtype = self.fc_select.weight.dtype
            s = feats[0].mean(dim=(2, 3), keepdim=True, dtype=dtype)  # [N, C, 1, 1]
            for f in feats[1:]:
                s = s + f.mean(dim=(2, 3), keepdim=True, dtype=dtype)
            z = self.fc_reduce(s)  # [N, d, 1, 1]
            attn = self.fc_select(z).view(n, m, c, 1, 1).softmax(dim=1)  # [N, M, C, 1, 1]
        attn = attn.to(feats[0].dtype).unbind(dim=1)  # M x [N, C, 1, 1]
        # V = sum_m a_m * U_m, accumulated in one output buffer.
        out = feats[0] * attn[0]
        for f, a in zip(feats[1:], attn[1:]):
            out = out.addcmul_(f, a)
        return out  # [N, C, H, W]
