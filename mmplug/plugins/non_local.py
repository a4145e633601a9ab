"""Non-local block, embedded-Gaussian form, with O(HW) memory.

Wang, Girshick, Gupta, He. "Non-local Neural Networks", CVPR 2018.
https://arxiv.org/abs/1711.07971

Every position attends to every position (Sec. 3.2-3.3):

1. ``theta = W_theta x``, ``phi = W_phi x``, ``g = W_g x``   1x1 convs to ``C'``
   channels (the paper: ``C' = C / 2``)
2. ``y_i = sum_j softmax_j(theta_i . phi_j) g_j``           embedded Gaussian
3. ``z = W_z y + x``                                        1x1 conv back to ``C``,
   residual

Same function, parameter names, ``_abbr_`` and init as mmcv's
``NonLocal2d(mode='embedded_gaussian')``, so ``type='NonLocal2d'`` can be
swapped for ``type='NonLocal'`` in a config and its checkpoints still load
(see the differences below):

* The attention is ``F.scaled_dot_product_attention``, whose fused kernels
  (flash / memory-efficient on CUDA, flash on CPU) keep only the per-row
  log-sum-exp and recompute the attention in backward: memory kept for
  backward grows as ``O(HW)``, where mmcv's ``NonLocal2d`` keeps the
  ``HW x HW`` matrix (64 MiB per image for a 64x64 map).
* ``use_scale`` divides the logits by ``sqrt(C')`` as mmcv and the authors'
  released code do (the paper's equation has no scale). SDPA's own default
  scale is that as well; we always pass ``scale=`` so ``use_scale=False`` means
  no scaling, as in mmcv.
* ``sub_sample`` (the paper's "subsampling trick": a 2x2 max-pool after ``phi``
  and ``g``) pools with ``ceil_mode=True``. On even H and W that is mmcv's
  pooling exactly; on odd sizes mmcv (floor mode) drops the last row/column
  from the keys and raises on maps with H or W = 1, where ours keeps them and
  works. ``checkpoint keys``: mmcv nests ``g``/``phi`` in a Sequential when it
  sub-samples (``g.0.conv.weight``); ours keeps ``g.conv.weight`` and a
  parameter-free ``pool``, so only ``sub_sample=False`` checkpoints load as is.

Init (mmcv's and the authors' code): ``theta``, ``phi`` and ``g`` normal with
std 0.01 and zero bias; the output projection is zero (its norm's scale and
shift when ``norm_cfg`` is given, the paper's zero-gamma BN; otherwise the conv
itself), so the block is exactly the identity at init. With a norm, the output
conv itself is N(0, 0.01^2) as in the authors' code, where mmcv leaves its
Kaiming init; either way the block starts as the identity.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule, constant_init, normal_init

from mmplug.registry import MODELS
from mmplug.utils.channels import reduced_channels
from mmplug.utils.validation import check_cfg, check_input, check_int


@MODELS.register_module()
class NonLocal(BaseModule):
    """Embedded-Gaussian non-local block with memory linear in H*W.

    Args:
        in_channels (int): Channels of the input feature map.
        rd_ratio (float): Inner width ``C'`` as a fraction of ``in_channels``.
            Defaults to 0.5 (the paper's ``C / 2``; mmcv's ``reduction=2``).
        rd_channels (int, optional): Explicit inner width; overrides
            ``rd_ratio``. Defaults to None.
        rd_divisor (int): Round the inner width to a multiple of this.
            Defaults to 1 (no rounding).
        use_scale (bool): Divide the pairwise logits by ``sqrt(C')``.
            Defaults to True (mmcv and the authors' code).
        sub_sample (bool): 2x2 max-pool ``phi`` and ``g`` (keys/values), 4x
            less attention work. Defaults to False.
        conv_cfg (dict, optional): Config of the four 1x1 convs. Defaults to
            None (``nn.Conv2d``).
        norm_cfg (dict, optional): Norm after the output conv (the paper uses
            BN with zero-initialised scale). Defaults to None (mmcv's default,
            also better with the small per-GPU batches of detection).
        init_cfg (dict | list[dict], optional): mmengine init config. The
            block's own init (identity) is re-applied by ``init_weights()``.
            Defaults to None.

    Note:
        Shape preserving and residual, so it fits any plugin position of
        mmdet/mmseg ``ResNet``; the paper adds one block before the last
        residual block of ``res4`` for COCO (in mmdet terms: a plugin in stage 3
        ``after_conv3``; mmdet applies it to every block of the stage). It is
        the identity at init, so a pretrained backbone is undisturbed at step
        0. Attention cost is still ``O((HW)^2)`` time; only memory is linear.

    Example:
        >>> import torch
        >>> from mmplug.plugins.non_local import NonLocal
        >>> nl = NonLocal(in_channels=256)
        >>> nl(torch.randn(2, 256, 28, 28)).shape
        torch.Size([2, 256, 28, 28])

        In an mmdet/mmseg ResNet config::

            plugins=[dict(cfg=dict(type='NonLocal'),
                          stages=(False, False, True, False),
                          position='after_conv3')]
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
            if not isinstance(value, bool):
                raise ValueError(f'NonLocal: {name} must be True or False, got {value!r}')
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
        # Not via init_weights(): that would mark the module initialised and
        # mmengine would then skip it after the host's init_cfg.
        self._reset_parameters()

    def init_weights(self):
        """theta/phi/g ~ N(0, 0.01^2), zero bias; zero output projection.

        Runs after the host's ``init_cfg`` (mmengine calls children's
        ``init_weights`` last), so the block is the identity again afterwards;
        a ``Pretrained`` init of the whole model still wins.
        """
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
        """``theta``, pooled ``phi`` and ``g`` as SDPA takes them: one head, ``[N, 1, *, C']``.

        Channels made unit-stride: with a strided last dim SDPA falls back to
        its math path, which keeps the ``[HW, L]`` matrix for backward.
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
        n, _, h, w = x.shape
        # y_i = sum_j softmax_j(theta_i . phi_j * scale) g_j, without the [HW, L]
        # matrix kept for backward (fused kernels recompute it from the row log-sum-exp).
        y = F.scaled_dot_product_attention(*self._qkv(x), scale=self.scale)  # [N, 1, HW, C']
        y = y.squeeze(1).transpose(1, 2).reshape(n, self.inter_channels, h, w)  # [N, C', H, W]
        return x + self.conv_out(y)  # z = W_z y + x
