"""Selective Kernel (SK) unit.

Li, Wang, Hu, Yang. "Selective Kernel Networks", CVPR 2019.
https://arxiv.org/abs/1903.06586

Neurons choose their receptive field by a softmax attention over ``M`` paths
(Sec. 3.1):

1. Split:  ``U_m = ReLU(BN(conv_m(x)))``, grouped 3x3 convs, path ``m`` with
   dilation ``m`` (the paper's 5x5 path is a 3x3 with dilation 2)
2. Fuse:   ``U = sum_m U_m``; ``s = GAP(U)``; ``z = ReLU(BN(W s))``, ``W`` maps
   ``C -> d`` with ``d = max(C / r, L)``
3. Select: ``a_m = softmax_m(A_m z)`` per channel; ``V = sum_m a_m * U_m``

Defaults are the paper's SKNet setting: ``M = 2`` (dilations 1, 2), ``G = 32``
groups, ``r = 16``, ``L = 32``. ``W`` and the ``A_m`` are bias-free as in the
paper's equations (BN follows ``W``; a per-path bias would only shift the
softmax).

In the paper the SK unit *replaces* the 3x3 conv of a ResNeXt bottleneck. As an
mmdet/mmseg plugin it is an extra ``C -> C`` unit inserted after a conv of the
block; it is not a residual module, see the Note in the class docstring.

Differences from fightingcv-attention's ``SKAttention`` (a popular port): it
uses full (``group=1``) convs with kernels 1/3/5/7 and bias, and its ``W`` has
no BN/ReLU and both FCs have biases. With kernels (3, 5), ``group=G``, zero
biases, a 5x5 kernel that holds our dilated 3x3 taps, and a ``W`` output kept
positive (so the ReLU is a no-op), it computes our function; the tests check
that.

Deliberate robustness choice (same function in fp32): under autocast the
selection path (``s``, ``z``, the softmax; ``[N, C]`` sized) runs in float32.
"""
import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule, constant_init, kaiming_init

from mmplug.registry import MODELS
from mmplug.utils.channels import reduced_channels
from mmplug.utils.validation import check_cfg, check_input, check_int


@MODELS.register_module()
class SK(BaseModule):
    """Selective Kernel plugin (shape preserving, ``C -> C``).

    Args:
        in_channels (int): Channels of the input (and output) feature map.
            Must be divisible by ``groups``.
        dilations (tuple[int]): Dilation of each path's 3x3 conv; the number of
            paths ``M`` is its length (at least 2). Defaults to (1, 2), the
            paper's SKNet (3x3 and "5x5").
        groups (int): Groups ``G`` of the path convs. Defaults to 32.
        rd_ratio (float): ``1 / r``: width of ``z`` as a fraction of
            ``in_channels``. Defaults to 1/16.
        rd_channels (int, optional): Explicit width ``d`` of ``z``; overrides
            ``rd_ratio`` and ``min_channels``. Defaults to None.
        rd_divisor (int): Round ``C / r`` to a multiple of this. Defaults to 1.
        min_channels (int): The paper's ``L``, the least width of ``z``.
            Defaults to 32.
        conv_cfg (dict, optional): Config of the path convs. Defaults to None
            (``nn.Conv2d``).
        norm_cfg (dict): Norm after each path conv and after ``W``. Defaults to
            ``dict(type='BN')``.
        act_cfg (dict): Activation after those norms. Defaults to
            ``dict(type='ReLU')``.
        init_cfg (dict | list[dict], optional): mmengine init config. The
            unit's own init is re-applied by ``init_weights()``. Defaults to
            None.

    Note:
        Shape preserving, so it fits any plugin position of mmdet/mmseg
        ``ResNet``; closest to the paper is ``after_conv2`` (the 3x3 conv it
        would replace; ``in_channels`` = planes, divisible by 32 in every
        ResNet stage).

        It is **not** the identity at init: its output is a softmax-weighted
        mix of freshly initialised conv-BN-ReLU paths (He normal init, BN
        scale 1, shift 0; the per-channel selection weights are random too,
        e.g. within 0.18-0.82 at C=256), i.e. non-negative, batch-normalised
        new features (mean ~0.4, std ~0.42 in training mode) that replace the
        block's pretrained ones at that position. The paper trains SKNets from
        scratch and gives no recipe for inserting the unit into a pretrained
        network, and none is invented here: expect the pretrained backbone to
        be disturbed at step 0 (plug it only where you can afford to retrain,
        and compare against the plain backbone).

        In training mode, BN on the pooled descriptor ``z`` needs more than one
        image per batch (PyTorch raises on a single value per channel); mmdet's
        ``norm_eval=True`` (the default) runs it in eval mode.

    Example:
        >>> import torch
        >>> from mmplug.plugins.selective_kernel import SK
        >>> sk = SK(in_channels=256)
        >>> sk(torch.randn(2, 256, 28, 28)).shape
        torch.Size([2, 256, 28, 28])

        In an mmdet/mmseg ResNet config::

            plugins=[dict(cfg=dict(type='SK'),
                          stages=(False, True, True, True),
                          position='after_conv2')]
    """

    _abbr_ = 'sk'
    #: The paper's placement (SK replaces the 3x3 conv), filled in by the tools for the short
    #: plugin form.
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
        if in_channels % groups != 0:
            raise ValueError(
                f'SK: in_channels ({in_channels}) must be divisible by groups ({groups}); '
                f'choose groups among the divisors of {in_channels}')
        if not isinstance(dilations, (tuple, list)) or len(dilations) < 2 or any(
                isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dilations):
            raise ValueError(
                f'SK: dilations must be a tuple of at least 2 positive ints (one per path), '
                f'got {dilations!r}')
        for name, value in (('conv_cfg', conv_cfg), ('norm_cfg', norm_cfg),
                            ('act_cfg', act_cfg)):
            check_cfg('SK', name, value)
        self.in_channels = in_channels
        self.dilations = tuple(dilations)
        self.groups = groups
        self.rd_channels = reduced_channels('SK', in_channels, rd_ratio, rd_channels, rd_divisor,
                                            min_channels)
        # One ConvModule per path (separately built: no shared weights).
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
        # Not via init_weights(): that would mark the module initialised and
        # mmengine would then skip it after the host's init_cfg.
        self._reset_parameters()

    def init_weights(self):
        """He normal (fan_out) convs, BN scale 1 and shift 0.

        Runs after the host's ``init_cfg`` (mmengine calls children's
        ``init_weights`` last); a ``Pretrained`` init of the whole model still
        wins.
        """
        super().init_weights()
        self._reset_parameters()

    def _reset_parameters(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                kaiming_init(m, mode='fan_out', nonlinearity='relu', bias=0)
            elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
                constant_init(m, 1, bias=0)

    def forward(self, x):
        check_input('SK', x, self.in_channels)
        n, c, h, w = x.shape
        m = len(self.dilations)
        # One grouped conv per path. A single grouped conv whose 5x5 kernel holds
        # both paths' taps (2.8x the FLOPs) measured slower on CPU (2 threads,
        # forward+backward: 34 vs 27 ms at 8x256x28x28, 17 vs 11 ms at 8x512x14x14).
        feats = [path(x) for path in self.paths]  # M x [N, C, H, W]
        # The selection path is tiny ([N, C]) and runs in the parameters' dtype
        # (float32 under autocast): BN over pooled descriptors, which differ
        # little between images, amplifies their bf16/fp16 rounding (measured:
        # up to 8 % mean output error under bf16 autocast, under 1 % with this).
        with torch.autocast(device_type=x.device.type, enabled=False):
            # GAP(sum_m U_m) as the sum of the paths' means: reads each path once
            # and writes nothing x-sized (stacking and summing wrote three maps).
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
