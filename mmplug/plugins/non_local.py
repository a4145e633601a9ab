"""Non-local block, embedded-Gaussian form, with O(HW) memory.

Wang, Girshick, Gupta, He. "Non-local Neural Networks", CVPR 2018.
https://arxiv.org/abs/1711.07971

Every position attends to every position (Sec. 3.2-3.3)::

    theta = W_theta x,  phi = W_phi x,  g = W_g x      1x1 convs to C' = C / 2
    y_i   = sum_j softmax_j(theta_i . phi_j) g_j       embedded Gaussian
    z     = W_z y + x                                  1x1 conv back to C

Init (mmcv's and the authors'): ``theta``, ``phi``, ``g`` with std 0.01, zero
bias; the output projection zero (with ``norm_cfg`` its norm, the paper's
zero-gamma BN, and the conv std 0.01 as the authors'), so the block is the
identity at init.

Placement: the authors add one block after a whole residual block (on the
trunk), for COCO before the last block of res4, i.e. ``PluggedBackbone(...,
plugins=[dict(cfg=dict(type='NonLocal'), after='layer3.4')])``
(``configs/non_local``). ``position='after_conv3'`` puts it inside the
residual branch of every block of a stage instead.

Deviations (mmcv's ``NonLocal2d(mode='embedded_gaussian')`` has the same
function, names and init; configs and ``sub_sample=False`` checkpoints swap):

* ``use_scale`` divides by ``sqrt(C')``, as mmcv and the authors' code (not in
  the paper's equation).
* ``sub_sample`` pools with ``ceil_mode=True`` (mmcv drops an odd last
  row/column) and keeps flat ``g.conv`` keys.
* ``F.scaled_dot_product_attention`` keeps ``O(HW)`` memory for backward
  (mmcv: the ``HW x HW`` matrix): ``5 C' HW`` floats per image against mmcv's
  ``4 C' HW + (HW)^2``, less once ``HW > C'`` (e.g. above 23x23 at c4's
  ``C' = 512``; a detector's c4 map for an 800x1333 image has 50x84).
* With ``norm_cfg`` the norm follows the plugin's own train/eval mode, not the
  host's ``norm_eval`` (``mmplug.layers.norm_mode``); inside a
  ``frozen_stages`` stage the plugin is frozen at its init.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule, constant_init, normal_init

from mmplug.layers import (
    check_bool,
    check_cfg,
    check_input,
    check_int,
    follow_module_mode,
    memory_format_of,
    reduced_channels,
)
from mmplug.registry import MODELS


@MODELS.register_module()
class NonLocal(BaseModule):
    """Embedded-Gaussian non-local block with memory linear in H*W.

    Args:
        in_channels (int): Channels of the input feature map.
        rd_ratio (float): ``C'`` as a fraction of ``in_channels``. Defaults to
            0.5 (the paper's; mmcv's ``reduction=2``).
        rd_channels (int, optional): Explicit ``C'``. Defaults to None.
        rd_divisor (int): Round ``C'`` to a multiple of this. Defaults to 1.
        use_scale (bool): Divide the logits by ``sqrt(C')``. Defaults to True.
        sub_sample (bool): 2x2 max-pool ``phi`` and ``g``. Defaults to False.
        conv_cfg (dict, optional): Config of the 1x1 convs. Defaults to None.
        norm_cfg (dict, optional): Norm after the output conv (the paper: BN).
            Defaults to None (mmcv's default).
        init_cfg (dict | list[dict], optional): mmengine init config; the
            identity init is re-applied by ``init_weights()``. Defaults to None.

    Example:
        >>> import torch
        >>> from mmplug.plugins.non_local import NonLocal
        >>> nl = NonLocal(in_channels=256)
        >>> nl(torch.randn(2, 256, 28, 28)).shape
        torch.Size([2, 256, 28, 28])

        The paper's placement in a ResNet-50 (attention time stays ``O((HW)^2)``)::

            backbone=dict(type='PluggedBackbone',
                          backbone=dict(type='ResNet', depth=50, ...),
                          plugins=[dict(cfg=dict(type='NonLocal'), after='layer3.4')])
    """

    # mmcv NonLocal2d's: backbone checkpoint keys stay the same on a swap.
    _abbr_ = 'nonlocal_block'
    #: No ResNet plugin position is the paper's (module docstring).
    default_position = None
    position_note = ('the authors add it after a whole residual block: PluggedBackbone with '
                     "after='layer3.4' does that (configs/non_local); position='after_conv3' "
                     'puts it inside the residual branch instead')

    def __init__(self,
                 in_channels,
                 rd_ratio=0.5,
                 rd_channels=None,
                 rd_divisor=1,
                 use_scale=True,
                 sub_sample=False,
                 conv_cfg=None,
                 norm_cfg=None,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        check_int('NonLocal', 'in_channels', in_channels)
        for name, value in (('use_scale', use_scale), ('sub_sample', sub_sample)):
            check_bool('NonLocal', name, value)
        for name, value in (('conv_cfg', conv_cfg), ('norm_cfg', norm_cfg)):
            check_cfg('NonLocal', name, value)
        self.in_channels = in_channels
        self.inter_channels = reduced_channels('NonLocal', in_channels, rd_ratio, rd_channels,
                                               rd_divisor)
        self.use_scale = use_scale
        self.sub_sample = sub_sample
        inter = self.inter_channels
        self.scale = inter**-0.5 if use_scale else 1.0
        # Names as in mmcv's NonLocal2d, so its (sub_sample=False) checkpoints load.
        self.g = ConvModule(in_channels, inter, 1, conv_cfg=conv_cfg, act_cfg=None)
        self.theta = ConvModule(in_channels, inter, 1, conv_cfg=conv_cfg, act_cfg=None)
        self.phi = ConvModule(in_channels, inter, 1, conv_cfg=conv_cfg, act_cfg=None)
        self.conv_out = ConvModule(inter, in_channels, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                                   act_cfg=None)
        self.pool = nn.MaxPool2d(2, ceil_mode=True) if sub_sample else nn.Identity()
        # Not init_weights(): mmengine would then skip it after the host's init_cfg.
        self._reset_parameters()

    def init_weights(self):
        """theta/phi/g ~ N(0, 0.01^2), zero output projection, after the host's ``init_cfg``."""
        super().init_weights()
        self._reset_parameters()

    def _reset_parameters(self):
        for m in (self.g, self.theta, self.phi):
            normal_init(m.conv, std=0.01, bias=0)
        if self.conv_out.with_norm:
            normal_init(self.conv_out.conv, std=0.01, bias=0)
            constant_init(self.conv_out.norm, 0, bias=0)
        else:
            constant_init(self.conv_out.conv, 0, bias=0)

    def _qkv(self, x):
        """``theta``, pooled ``phi`` and ``g`` as SDPA takes them, ``[N, 1, *, C']``.

        Contiguous: with a strided last dim SDPA falls back to its memory-hungry math path.
        """
        theta = self.theta(x).flatten(2).transpose(1, 2).contiguous()  # [N, HW, C']
        phi = self.pool(self.phi(x)).flatten(2).transpose(1, 2).contiguous()  # [N, L, C']
        g = self.pool(self.g(x)).flatten(2).transpose(1, 2).contiguous()  # [N, L, C']
        return theta.unsqueeze(1), phi.unsqueeze(1), g.unsqueeze(1)

    def attention(self, x, query):
        """Attention weights ``softmax_j(theta_i . phi_j)`` of the query pixel(s) ``query``.

        Args:
            x (Tensor): ``[N, C, H, W]``.
            query (int | Tensor): Flat index ``i = row * W + col`` of the
                query position(s).

        Returns:
            Tensor: ``[N, len(query), L]`` over the ``L`` key positions (``H*W``,
            or the pooled grid with ``sub_sample``).
        """
        check_input('NonLocal', x, self.in_channels)
        theta, phi, _ = self._qkv(x)
        q = theta[:, 0, torch.as_tensor(query, device=x.device).reshape(-1)]  # [N, Q, C']
        return torch.softmax(q @ phi[:, 0].transpose(1, 2) * self.scale, dim=-1)

    def forward(self, x):
        check_input('NonLocal', x, self.in_channels)
        follow_module_mode(self)
        n, _, h, w = x.shape
        # y_i = sum_j softmax_j(theta_i . phi_j * scale) g_j
        y = F.scaled_dot_product_attention(*self._qkv(x), scale=self.scale)  # [N, 1, HW, C']
        y = y.squeeze(1).transpose(1, 2).reshape(n, self.inter_channels, h, w)  # [N, C', H, W]
        # y is a channels-last view and conv_out's output would be too: summed with an
        # NCHW x (mixed layouts) that costs ~12x a plain add on the CPU. For an NCHW x the
        # copy is saved for conv_out's backward (C' x HW per image).
        y = y.contiguous(memory_format=memory_format_of(x))
        return x + self.conv_out(y)  # z = W_z y + x
