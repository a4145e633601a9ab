"""The implementations every mmplug module is compared with, and how our weights map into them.

A *candidate* (``Candidate``) is one implementation in a benchmark group: ours, a *peer*
(fightingcv-attention, timm, mmcv, mmdet, mmseg; only those that compute the same function,
built with equal settings) or a *reference* (the plain op a conv replacement replaces: shown,
not a peer). ``MODULES`` lists, per module, its input kind, the stages it is measured at and
the candidates for a given channel count.

The ``parity_*`` functions map the weights of ``ours`` into a peer so that both compute the
same output; each returns ``(note, transform)``: what had to be set equal, and a function
``transform(out, inputs)`` (or None) that turns the peer's output into ours. Call them
under ``torch.no_grad()``; they write into both modules. The benchmark
(``mmplug.analysis.benchmark.check_parity``) and the parity tests of ``tests/test_*.py``
use them::

    with torch.no_grad():
        note, transform = parity_se_selayer(mmplug.SE(64), SELayer(64, ratio=16))

Peers are imported when built, so a missing package fails only its own candidate; timm's
layers join where ``timm.layers`` imports (``timm_available``). Per module:

* SE: fightingcv-attention ``SEAttention`` (no FC biases), mmdet's ``SELayer`` (the same
  function and parameters) and timm's ``SEModule``.
* CBAM: fightingcv ``CBAMBlock(kernel_size=7)``: no MLP biases, no spatial BN, and it adds
  its input back; compared as ``peer(x) - x`` with our spatial BN set to the identity. And
  timm's ``CbamModule``.
* SGE: fightingcv ``SpatialGroupEnhance`` (same groups).
* SK: fightingcv ``SKAttention(kernels=[3, 5], group=32)``: full 5x5 grouped convs where
  ours has dilated 3x3s, biases, no BN on ``W``. And "per-branch loop"
  (``SKPerBranchLoop``): our function and parameters in the structure of the common
  implementations (paths and selection FCs in Python loops, outputs stacked, ``U``
  materialised; the SK target is measured against it). Ours runs one grouped conv per path
  too (the two dilations cannot share one dense conv without 2.8x the MACs) but pools the
  paths without stacking or summing them and accumulates ``V`` in one buffer. And timm's
  ``SelectiveKernel``.
* NonLocal: mmcv ``NonLocal2d`` (embedded Gaussian, same keys) and timm's ``NonLocalAttn``.
* DCNv2UnitMask: ours with ``impl='torch'`` and ``impl='mmcv'`` (the same function) and
  mmcv's ``ModulatedDeformConv2dPack``, whose mask is ``sigmoid`` where ours is
  ``2 * sigmoid``: compared with the mask logits zeroed, where ours is exactly twice the
  peer (no bias), offsets random.
* BlurPool2d: timm's ``BlurPool2d``.
* ASPPBlock (``proj_kernel_size=3``): mmseg's ``ASPPHead`` up to its bottleneck
  (``_forward_feature``; ``conv_seg`` is not built into the row).
* ContextBlock (mmcv) computes another function than any of ours: no row.
"""
import functools
import importlib

import torch
from torch import nn

import mmplug

#: The ResNet-50 stage outputs a module is measured at by default.
ALL = ('c2', 'c3', 'c4', 'c5')


class Candidate:
    """One implementation in a group.

    Args:
        impl (str): Its name in the table.
        kind (str): 'ours', 'peer' or 'reference' (the op a conv replacement
            replaces: shown, but not a peer).
        build (callable): ``build()`` returns the module (lazily: a peer
            package that is missing only fails its own row).
        parity (callable, optional): ``parity(ours, other)`` on eval-mode
            copies with random weights, under ``no_grad``: maps the weights of
            ``ours`` into ``other`` and returns ``(note, transform)``, where
            ``transform(out, inputs)`` (or None) turns ``other``'s output into
            ours. Compared with the group's first candidate.
    """

    def __init__(self, impl, kind, build, parity=None):
        self.impl, self.kind, self.build, self.parity = impl, kind, build, parity


def _fcv(name):
    return importlib.import_module(f'fightingcv_attention.attention.{name}')


@functools.lru_cache(maxsize=None)
def timm_available():
    """Whether ``timm.layers`` imports here (it needs torchvision): its peers join the groups."""
    try:
        importlib.import_module('timm.layers')
    except Exception:  # not installed, or its torchvision import fails
        return False
    return True


def _timm(name):
    module = 'timm.layers.cbam' if name == 'CbamModule' else 'timm.layers'
    return getattr(importlib.import_module(module), name)


def _with_timm(candidates, *timm_candidates):
    return candidates + list(timm_candidates) if timm_available() else candidates


# ------------------------------------------------------------ parity mappings

def bn_identity_(bn):
    """An eval-mode BatchNorm that passes its input through unchanged."""
    bn.running_mean.zero_()
    bn.running_var.fill_(1 - bn.eps)
    bn.weight.fill_(1.0)
    bn.bias.zero_()


def copy_parameters(src, dst):
    """Copy every parameter of ``src`` into the one of ``dst`` with the same name.

    (mmcv's DCN packs log a line on every ``load_state_dict``.)
    """
    dst_params = dict(dst.named_parameters())
    src_params = dict(src.named_parameters())
    if dst_params.keys() != src_params.keys():
        raise RuntimeError(f'parameter names differ: {sorted(src_params)} vs {sorted(dst_params)}')
    for name, p in src_params.items():
        dst_params[name].copy_(p)


def parity_se_fightingcv(ours, peer):
    """SE into fightingcv ``SEAttention``: its FCs have no bias, so ours are set to 0."""
    fc1, fc2 = [m for m in peer.modules() if isinstance(m, nn.Linear)]
    nn.init.zeros_(ours.fc1.bias)
    nn.init.zeros_(ours.fc2.bias)
    fc1.weight.copy_(ours.fc1.weight.flatten(1))
    fc2.weight.copy_(ours.fc2.weight.flatten(1))
    return 'our FC biases set to 0 (the peer has none)', None


def parity_se_selayer(ours, peer):
    """SE into mmdet's or mmseg's ``SELayer`` (1x1 ``conv1``/``conv2``): the same parameters."""
    for src, dst in ((ours.fc1, peer.conv1.conv), (ours.fc2, peer.conv2.conv)):
        dst.weight.copy_(src.weight)
        dst.bias.copy_(src.bias)
    return 'same parameters', None


def parity_se_timm(ours, peer):
    """SE into timm ``SEModule``: the same parameters."""
    for src, dst in ((ours.fc1, peer.fc1), (ours.fc2, peer.fc2)):
        dst.weight.copy_(src.weight)
        dst.bias.copy_(src.bias)
    return 'same parameters', None


def parity_cbam_fightingcv(ours, peer):
    """CBAM into fightingcv ``CBAMBlock``: no MLP biases, no spatial BN, a residual."""
    nn.init.zeros_(ours.fc1.bias)  # the peer's MLP has no bias
    nn.init.zeros_(ours.fc2.bias)
    peer.ca.se[0].weight.copy_(ours.fc1.weight)
    peer.ca.se[2].weight.copy_(ours.fc2.weight)
    peer.sa.conv.weight.copy_(ours.spatial_conv.weight)
    norm = ours.spatial_norm
    if isinstance(norm, nn.modules.batchnorm._BatchNorm):  # eval BN as the identity
        bn_identity_(norm)
        peer.sa.conv.bias.zero_()
    else:
        peer.sa.conv.bias.copy_(ours.spatial_conv.bias)
    return ('our MLP biases 0 and spatial BN the identity (the peer has neither); '
            'peer(x) - x (it adds its input back)'), lambda out, inputs: out - inputs[0]


def parity_cbam_timm(ours, peer):
    """CBAM into timm ``CbamModule``: no MLP biases; its spatial conv takes [mean; max]."""
    nn.init.zeros_(ours.fc1.bias)  # the peer's MLP has no bias
    nn.init.zeros_(ours.fc2.bias)
    peer.channel.fc1.weight.copy_(ours.fc1.weight)
    peer.channel.fc2.weight.copy_(ours.fc2.weight)
    # The peer stacks [mean; max] where ours stacks [max; mean].
    peer.spatial.conv.conv.weight.copy_(ours.spatial_conv.weight.flip(1))
    peer.spatial.conv.bn.load_state_dict(ours.spatial_norm.state_dict())
    return ('our MLP biases 0 (the peer has none); its spatial conv takes [mean; max], '
            'our weights flipped to match'), None


def parity_sge_fightingcv(ours, peer):
    """SGE into fightingcv ``SpatialGroupEnhance``: the same parameters."""
    peer.weight.copy_(ours.weight.view_as(peer.weight))
    peer.bias.copy_(ours.bias.view_as(peer.bias))
    return 'same parameters', None


def parity_sk_fightingcv(ours, peer):
    """SK into fightingcv ``SKAttention(kernels=[3, 5])`` of the same groups.

    The peer has full (biased) convs, ``W`` without BN/ReLU and biased FCs. Its
    biases become 0, its 5x5 kernel holds our dilation-2 taps, its ``W`` is ours
    scaled by our eval BN and shifted so that ``z > 0`` (the ReLU after our BN is
    then a no-op, as in the peer).
    """
    bn = ours.fc_reduce.bn
    bn.running_mean.zero_()
    bn.running_var.fill_(1 - bn.eps)  # eval BN is x * weight + bias exactly
    bn.bias.fill_(20.0)
    for path, conv_seq in zip(ours.paths, peer.convs):
        conv = conv_seq.conv
        conv.weight.zero_()
        conv.bias.zero_()
        if conv.kernel_size == (3, 3):
            conv.weight.copy_(path.conv.weight)
        else:
            conv.weight[:, :, ::2, ::2] = path.conv.weight  # dilation 2 == sparse 5x5
        conv_seq.bn.load_state_dict(path.bn.state_dict())
    peer.fc.weight.copy_(ours.fc_reduce.conv.weight.flatten(1) * bn.weight[:, None])
    peer.fc.bias.copy_(bn.bias)
    select = ours.fc_select.weight.flatten(1).view(len(peer.fcs), ours.in_channels, -1)
    for i, fc in enumerate(peer.fcs):
        fc.weight.copy_(select[i])
        fc.bias.zero_()
    return ('peer biases 0, its 5x5 kernels hold our dilated 3x3 taps, our W-BN folded '
            'into its FC with z > 0'), None


def parity_sk_timm(ours, peer):
    """SK into timm ``SelectiveKernel`` (no split_input, dilated second path)."""
    for path, other in zip(ours.paths, peer.paths):
        other.conv.weight.copy_(path.conv.weight)
        other.bn.load_state_dict(path.bn.state_dict())
    peer.attn.fc_reduce.weight.copy_(ours.fc_reduce.conv.weight)
    peer.attn.bn.load_state_dict(ours.fc_reduce.bn.state_dict())
    peer.attn.fc_select.weight.copy_(ours.fc_select.weight)
    return 'same parameters (the peer without split_input, dilated 3x3 second path)', None


def parity_non_local_timm(ours, peer):
    """NonLocal into timm ``NonLocalAttn``: logits scaled by 1/sqrt(C), an output BN."""
    # The peer scales the logits by 1/sqrt(C), ours by 1/sqrt(C'): its theta holds ours
    # times sqrt(C / C').
    ratio = (ours.in_channels / ours.inter_channels) ** 0.5
    for src, dst, factor in ((ours.theta, peer.t, ratio), (ours.phi, peer.p, 1.0),
                             (ours.g, peer.g, 1.0), (ours.conv_out, peer.z, 1.0)):
        dst.weight.copy_(src.conv.weight * factor)
        dst.bias.copy_(src.conv.bias * factor)
    bn_identity_(peer.norm)
    return ("peer's theta scaled by sqrt(C / C') (it scales logits by 1/sqrt(C)), its "
            'output BN the identity'), None


def parity_state_dict(ours, peer):
    """The peer loads our state dict as it is (mmcv ``NonLocal2d``, timm ``BlurPool2d``)."""
    peer.load_state_dict(ours.state_dict())
    return 'same state dict', None


def parity_same_parameters(ours, other):
    """Every parameter copied by name (another implementation of ours)."""
    copy_parameters(ours, other)
    return 'same parameters', None


def parity_dcn_mmcv_pack(ours, peer):
    """DCNv2UnitMask into mmcv ``ModulatedDeformConv2dPack`` (mask ``sigmoid``, ours ``2 *``).

    With the mask logits zeroed both masks are constant, and ours is exactly
    twice the peer (no bias); the offsets stay random.
    """
    copy_parameters(ours, peer)
    mask_rows = slice(2 * peer.conv_offset.out_channels // 3, None)
    for layer in (ours.conv_offset, peer.conv_offset):
        layer.weight[mask_rows] = 0
        layer.bias[mask_rows] = 0
    return ('same parameters, mask logits zeroed (offsets random): ours = 2 x peer '
            '(mask 2 sigmoid vs sigmoid)'), lambda out, inputs: 2 * out


def parity_aspp_mmseg(ours, peer):
    """ASPPBlock into mmseg's ``ASPPHead`` up to its features (``HeadFeatures``)."""
    peer.head.load_state_dict(ours.state_dict())  # strict: conv_seg is not built
    return 'same state dict', None


# ------------------------------------------------------------ peers and candidates

class HeadFeatures(nn.Module):
    """An mmseg decode head up to its features (``_forward_feature``), without ``conv_seg``."""

    def __init__(self, head):
        super().__init__()
        head.conv_seg = nn.Identity()  # not run by _forward_feature: no params in the row
        self.head = head

    def forward(self, x):
        return self.head._forward_feature([x])


class Levels(nn.Module):
    """Calls a multi-level neck (``module(list_of_levels)``) as ``adapter(*levels)``."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *levels):
        return self.module(list(levels))


class SKPerBranchLoop(mmplug.SK):
    """Our SK's function (same parameters and keys) in the structure of the common
    implementations (fightingcv ``SKAttention``, the SKNet ports): the paths and
    the per-path selection FCs each run in a Python loop, their outputs are
    stacked, ``U`` is materialised for the pooling, and ``V`` is the sum of the
    stacked weighted paths. The SK target (>= 2x faster than this) is measured
    against it.
    """

    def forward(self, x):
        n, c = x.shape[:2]
        m = len(self.paths)
        outs = [path(x) for path in self.paths]
        feats = torch.stack(outs, dim=0)  # [M, N, C, H, W]
        u = feats.sum(dim=0)
        z = self.fc_reduce(u.mean(dim=(2, 3), keepdim=True))  # [N, d, 1, 1]
        select = self.fc_select.weight.view(m, c, -1, 1, 1)
        logits = torch.stack([torch.nn.functional.conv2d(z, w) for w in select])
        return (feats * logits.softmax(dim=0)).sum(dim=0)


def _mmdet_se(c):
    from mmdet.models.layers import SELayer
    return SELayer(c, ratio=16)


def _mmcv_non_local(c):
    from mmcv.cnn import NonLocal2d
    return NonLocal2d(c, reduction=2, use_scale=True, conv_cfg=dict(type='Conv2d'),
                      mode='embedded_gaussian')


def _mmcv_dcn(c):
    from mmcv.ops import ModulatedDeformConv2dPack
    return ModulatedDeformConv2dPack(c, c, 3, padding=1, deform_groups=1, bias=False)


def _mmseg_aspp(c, channels):
    from mmseg.models.decode_heads import ASPPHead
    return HeadFeatures(ASPPHead(in_channels=c, channels=channels, dilations=(1, 6, 12, 18),
                                 num_classes=1, norm_cfg=dict(type='BN')))


def _timm_sk(c):
    return _timm('SelectiveKernel')(c, c, kernel_size=[3, 5], groups=32, split_input=False,
                                    rd_channels=mmplug.SK(c).rd_channels)


def _conv_reference(c, stride=1):
    return Candidate(f'nn.Conv2d 3x3{" stride 2" if stride > 1 else ""} (replaced conv)',
                     'reference', lambda: nn.Conv2d(c, c, 3, stride, 1, bias=False))


def se_candidates(c):
    """SE: fightingcv ``SEAttention``, mmdet ``SELayer`` (and timm ``SEModule``)."""
    return _with_timm(
        [Candidate('ours', 'ours', lambda: mmplug.SE(c)),
         Candidate('fightingcv SEAttention', 'peer',
                   lambda: _fcv('SEAttention').SEAttention(channel=c, reduction=16),
                   parity_se_fightingcv),
         Candidate('mmdet SELayer', 'peer', lambda: _mmdet_se(c), parity_se_selayer)],
        Candidate('timm SEModule', 'peer',
                  lambda: _timm('SEModule')(c, rd_ratio=1 / 16, rd_divisor=1), parity_se_timm))


def cbam_candidates(c):
    """CBAM: fightingcv ``CBAMBlock(kernel_size=7)`` (and timm ``CbamModule``)."""
    return _with_timm(
        [Candidate('ours', 'ours', lambda: mmplug.CBAM(c)),
         Candidate('fightingcv CBAMBlock', 'peer',
                   lambda: _fcv('CBAM').CBAMBlock(channel=c, reduction=16, kernel_size=7),
                   parity_cbam_fightingcv)],
        Candidate('timm CbamModule', 'peer', lambda: _timm('CbamModule')(c, rd_ratio=1 / 16),
                  parity_cbam_timm))


def sge_candidates(c):
    """SGE: fightingcv ``SpatialGroupEnhance`` (same groups)."""
    return [Candidate('ours', 'ours', lambda: mmplug.SGE(c, groups=64)),
            Candidate('fightingcv SpatialGroupEnhance', 'peer',
                      lambda: _fcv('SGE').SpatialGroupEnhance(groups=64),
                      parity_sge_fightingcv)]


def sk_candidates(c):
    """SK: the per-branch loop, fightingcv ``SKAttention`` (and timm ``SelectiveKernel``)."""
    return _with_timm(
        [Candidate('ours', 'ours', lambda: mmplug.SK(c)),
         Candidate('per-branch loop (our function)', 'peer', lambda: SKPerBranchLoop(c),
                   parity_state_dict),
         Candidate('fightingcv SKAttention', 'peer',
                   lambda: _fcv('SKAttention').SKAttention(channel=c, kernels=[3, 5],
                                                           reduction=16, group=32, L=32),
                   parity_sk_fightingcv)],
        Candidate('timm SelectiveKernel', 'peer', lambda: _timm_sk(c), parity_sk_timm))


def non_local_candidates(c):
    """NonLocal: mmcv ``NonLocal2d`` (and timm ``NonLocalAttn``)."""
    return _with_timm(
        [Candidate('ours', 'ours', lambda: mmplug.NonLocal(c)),
         Candidate('mmcv NonLocal2d', 'peer', lambda: _mmcv_non_local(c), parity_state_dict)],
        Candidate('timm NonLocalAttn', 'peer',
                  lambda: _timm('NonLocalAttn')(c, rd_ratio=0.5, rd_divisor=1),
                  parity_non_local_timm))


def _only_ours(cls):
    return lambda c: [Candidate('ours', 'ours', lambda: cls(c))]


def _coord_conv(c):
    return [Candidate('ours', 'ours', lambda: mmplug.CoordConv2d(c, c, 3, padding=1, bias=False)),
            _conv_reference(c)]


def _ghost_conv(c):
    return [Candidate('ours', 'ours', lambda: mmplug.GhostConv2d(c, c, 3, padding=1, bias=False)),
            _conv_reference(c)]


def _blur_conv(c):
    return [Candidate('ours', 'ours',
                      lambda: mmplug.BlurConv2d(c, c, 3, stride=2, padding=1, bias=False)),
            _conv_reference(c, stride=2)]


def _blur_pool(c):
    return _with_timm(
        [Candidate('ours', 'ours', lambda: mmplug.BlurPool2d(c)),
         Candidate('nn.MaxPool2d(3, 2, 1) (reference)', 'reference',
                   lambda: nn.MaxPool2d(3, 2, 1))],
        Candidate('timm BlurPool2d', 'peer', lambda: _timm('BlurPool2d')(c),
                  parity_state_dict))


def _dcn(c):
    def ours(impl):
        return lambda: mmplug.DCNv2UnitMask(c, c, 3, padding=1, bias=False, impl=impl)
    return [Candidate('ours (torch)', 'ours', ours('torch')),
            Candidate('ours (mmcv op)', 'ours', ours('mmcv'), parity_same_parameters),
            Candidate('mmcv ModulatedDeformConv2dPack', 'peer', lambda: _mmcv_dcn(c),
                      parity_dcn_mmcv_pack),
            _conv_reference(c)]


def _asff(c):
    return [Candidate('ours', 'ours', lambda: Levels(mmplug.ASFF([c] * 3)))]


def _aspp(c):
    channels = max(c // 8, 1)  # 2048 -> 256, DeepLabV3's width
    return [Candidate('ours', 'ours',
                      lambda: mmplug.ASPPBlock(c, channels, channels=channels,
                                               dilations=(1, 6, 12, 18), proj_kernel_size=3)),
            Candidate('mmseg ASPPHead', 'peer', lambda: _mmseg_aspp(c, channels),
                      parity_aspp_mmseg)]


#: name -> (input kind, default stages, candidates(channels of the input))
MODULES = {
    'SE': ('feature', ALL, se_candidates),
    'CBAM': ('feature', ALL, cbam_candidates),
    'SGE': ('feature', ALL, sge_candidates),
    'SK': ('feature', ALL, sk_candidates),
    'NonLocal': ('feature', ('c3', 'c4'), non_local_candidates),  # c2's (HW)^2: --stages
    'STN': ('feature', ('c4', 'c5'), _only_ours(mmplug.STN)),
    'StripPooling': ('feature', ALL, _only_ours(mmplug.StripPooling)),
    'CoordConvPlugin': ('feature', ALL, _only_ours(mmplug.CoordConvPlugin)),
    'CoordConv2d': ('conv', ALL, _coord_conv),
    'GhostConv2d': ('conv', ALL, _ghost_conv),
    'BlurConv2d': ('strided', ('c3', 'c4', 'c5'), _blur_conv),
    'BlurPool2d': ('strided', ('c3', 'c4', 'c5'), _blur_pool),
    'DCNv2UnitMask': ('conv', ('c3', 'c4', 'c5'), _dcn),  # mmdet's stage_with_dcn
    'ASFF': ('pyramid', ('p3',), _asff),
    'RFBBlock': ('feature', ('c3', 'c4'), _only_ours(mmplug.RFBBlock)),
    'ASPPBlock': ('feature', ('c5',), _aspp),
    'MPMBlock': ('feature', ('c5',), _only_ours(mmplug.MPMBlock)),
}
