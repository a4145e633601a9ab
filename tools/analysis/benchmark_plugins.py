"""Speed, memory and cost of every mmplug module next to the peers that compute its function.

For each module and feature shape (a *group*) the tool builds our module, its
peers (fightingcv-attention, mmcv, mmdet, mmseg; only those that compute the
same function, built with equal settings) and, for conv replacements, the plain
op they replace (a *reference*, not a peer). It measures them **in one run,
interleaved**: every repeat times each candidate of the group once, in an order
shuffled from repeat to repeat (seeded: ``_timing.round_robin``), so the noise
of a busy machine falls on all of them alike and no candidate always runs right
after the same neighbour (a fixed rotation did that, and biased SE's forward at
c4/c5 by 10-24 %). Per candidate:

* ``fwd ms``: median forward time, train mode, under ``torch.no_grad()`` (BN
  normalises with batch statistics as in training; no graph is recorded).
* ``fwd+bwd ms``: median time of a forward with grad and
  ``out.sum().backward()`` (a tuple output: the sum of its sums). The input
  requires grad, so its gradient is computed as inside a network; gradients
  are cleared before each repeat, outside the timing.
* ``params``; ``MMACs`` of one forward of the whole batch, counted by
  ``module_overhead.count_macs``: FlopCounterMode FLOPs / 2 (aten conv,
  matmul, attention; elementwise ops, pooling, normalisation, ``grid_sample``
  are not counted) plus mmcv's deformable convs as their dense conv.
* ``saved MiB``: what autograd keeps for backward, seen through
  ``torch.autograd.graph.saved_tensors_hooks``: the sum of ``nbytes`` of the
  *distinct storages* of the saved tensors (a view, or a tensor saved by
  several ops, counts once, as its whole storage), leaving out the storages of
  the inputs, the parameters and the buffers, which exist whether or not the
  module is trained. The output counts when the module saves it (a sigmoid
  does). ``saved_tensor_bytes`` is the rule as a function.
* the clone floor: the median time of one ``x.clone()`` of the input(s), timed
  in the same rounds. A module that reads its input and writes its output
  once cannot beat it; ``fwd / clone`` says how far above it a module is.
* ``vs fastest peer``: time over the fastest peer's time in the group, forward
  and forward+backward each against its own fastest peer (a peer's own ratio
  is >= 1.00x). Blank where a group has no peer and for reference rows.

Warm-up repeats are excluded from the medians. Under ``--threads`` every op
runs with that many intra-op threads (default ``torch.get_num_threads()``).

Shapes: ResNet-50 stage outputs (c2: 256 channels at stride 4, c3: 512 at 8,
c4: 1024 at 16, c5: 2048 at 32) for ``--batch`` images of ``--image`` size
times ``--scale``. The default, 8 images of 224x224 (c3 = 8x512x28x28), is a
detection input (800x1344 in mmdet) scaled down so a few CPU cores run the
whole table in minutes; ``--scale 4`` comes close to it. Each module runs at
the stages where it is used (``--stages`` overrides), with the input it gets
there:

* plugins and neck blocks: the stage output ``[N, C, H, W]``;
* conv replacements (CoordConv2d, GhostConv2d, DCNv2UnitMask): the stage's
  bottleneck ``conv2``, 3x3, ``C/4 -> C/4`` at the stage's resolution;
* strided replacements (BlurConv2d, BlurPool2d): the stride-2 ``conv2`` of the
  stage's first bottleneck, ``C/4`` channels at twice the stage's resolution;
* ASFF: FPN levels P3-P5 (256 channels at strides 8, 16, 32); given another
  stage, that stage and two levels of half and quarter its size.

``--shape N C H W`` replaces the stage shapes by one stage-output shape (conv
replacements still take ``C/4`` of it). ``--smoke`` runs tiny shapes (batch 2,
64x64 images, a quarter of the widths) with 1 warm-up and 2 repeats, for CI:
its numbers check that the tool works, not how fast anything is.

Peers and how parity is checked: copies of ours and of the peer get random
weights, ours are mapped into the peer (the mappings of ``tests/test_*.py``)
and both run on the first two images in eval mode; the table's footnotes give
``max |ours - peer|`` and what had to be set equal (e.g. biases the peer lacks).

* SE: fightingcv-attention ``SEAttention`` (no FC biases) and mmdet's
  ``SELayer`` (the same function and parameters).
* CBAM: fightingcv ``CBAMBlock(kernel_size=7)``: no MLP biases, no spatial BN,
  and it adds its input back; compared as ``peer(x) - x`` with our spatial BN
  set to the identity.
* SGE: fightingcv ``SpatialGroupEnhance`` (same groups).
* SK: fightingcv ``SKAttention(kernels=[3, 5], group=32)``: full 5x5 grouped
  convs where ours has dilated 3x3s, biases, no BN on ``W``; mapped as in
  ``tests/test_selective_kernel.py``. And "per-branch loop": our function and
  parameters in the structure of the common implementations (paths and
  selection FCs in Python loops, outputs stacked, ``U`` materialised; the SK
  target is measured against it). Ours runs one grouped conv per path too (the
  two dilations cannot share one dense conv without 2.8x the MACs) but pools
  the paths without stacking or summing them and accumulates ``V`` in one
  buffer.
* NonLocal: mmcv ``NonLocal2d`` (embedded Gaussian, same keys).
* DCNv2UnitMask: ours with ``impl='torch'`` and ``impl='mmcv'`` (the same
  function) and mmcv's ``ModulatedDeformConv2dPack``, whose mask is
  ``sigmoid`` where ours is ``2 * sigmoid``: compared with the mask logits
  zeroed, where ours is exactly twice the peer (no bias), offsets random.
* ASPPBlock (``proj_kernel_size=3``): mmseg's ``ASPPHead`` up to its
  bottleneck (``_forward_feature``; ``conv_seg`` is not built into the row).
* ContextBlock (mmcv) computes another function than any of ours: no row.

On CUDA (``--device cuda``, the default when available) times come from CUDA
events after a synchronize, and a ``peak MiB`` column gives the peak memory of
one forward+backward above what was allocated before it. That path is written
but has not been run here (CPU only).

    python tools/analysis/benchmark_plugins.py --threads 2 --out bench.md --json bench.json
    python tools/analysis/benchmark_plugins.py --only SE SGE --stages c3 --repeats 30
    python tools/analysis/benchmark_plugins.py --only NonLocal --shape 2 1024 64 64
    python tools/analysis/benchmark_plugins.py --smoke          # CI: seconds
"""
import argparse
import contextlib
import copy
import functools
import importlib
import math
import statistics
import sys
from datetime import datetime, timezone

import torch
from torch import nn

import mmplug
# sibling scripts (on sys.path when this one runs); importing module_overhead registers mmplug
from _timing import (MIB, device_name, fmt, fmt_ratio, non_negative_int, num_threads,
                     positive, progress_bar, round_robin, timer, write_outputs)
from module_overhead import count_macs

#: Feature levels: name -> (channels, stride). c2-c5: ResNet-50 stage outputs;
#: p3: an FPN level (256 channels).
STAGES = {'c2': (256, 4), 'c3': (512, 8), 'c4': (1024, 16), 'c5': (2048, 32), 'p3': (256, 8)}
ALL = ('c2', 'c3', 'c4', 'c5')

DEFAULTS = dict(batch=8, image=(224, 224), width_div=1, warmup=2, repeats=10)
SMOKE = dict(batch=2, image=(64, 64), width_div=4, warmup=1, repeats=2)

#: Parity holds when max |ours - peer| <= PARITY_TOL * max(1, max |peer|).
PARITY_TOL = 1e-4


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

def _parity_se_fcv(ours, peer):
    fc1, fc2 = [m for m in peer.modules() if isinstance(m, nn.Linear)]
    nn.init.zeros_(ours.fc1.bias)
    nn.init.zeros_(ours.fc2.bias)
    fc1.weight.copy_(ours.fc1.weight.flatten(1))
    fc2.weight.copy_(ours.fc2.weight.flatten(1))
    return 'our FC biases set to 0 (the peer has none)', None


def _parity_se_mmdet(ours, peer):
    for src, dst in ((ours.fc1, peer.conv1.conv), (ours.fc2, peer.conv2.conv)):
        dst.weight.copy_(src.weight)
        dst.bias.copy_(src.bias)
    return 'same parameters', None


def _parity_cbam_fcv(ours, peer):
    nn.init.zeros_(ours.fc1.bias)  # the peer's MLP has no bias
    nn.init.zeros_(ours.fc2.bias)
    peer.ca.se[0].weight.copy_(ours.fc1.weight)
    peer.ca.se[2].weight.copy_(ours.fc2.weight)
    peer.sa.conv.weight.copy_(ours.spatial_conv.weight)
    norm = ours.spatial_norm
    if isinstance(norm, nn.modules.batchnorm._BatchNorm):  # eval BN as the identity
        _bn_identity_(norm)
        peer.sa.conv.bias.zero_()
    else:
        peer.sa.conv.bias.copy_(ours.spatial_conv.bias)
    return ('our MLP biases 0 and spatial BN the identity (the peer has neither); '
            'peer(x) - x (it adds its input back)'), lambda out, inputs: out - inputs[0]


def _parity_sge_fcv(ours, peer):
    peer.weight.copy_(ours.weight.view_as(peer.weight))
    peer.bias.copy_(ours.bias.view_as(peer.bias))
    return 'same parameters', None


def _parity_sk_fcv(ours, peer):
    # As tests/test_selective_kernel.py: the peer's biases 0, its 5x5 kernel holds
    # our dilation-2 taps, its W is ours scaled by our eval BN and shifted so that
    # z > 0 (the ReLU after our BN is then a no-op, as in the peer).
    bn = ours.fc_reduce.bn
    bn.running_mean.zero_()
    bn.running_var.fill_(1 - bn.eps)
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


def _bn_identity_(bn):
    """An eval-mode BatchNorm that passes its input through unchanged."""
    bn.running_mean.zero_()
    bn.running_var.fill_(1 - bn.eps)
    bn.weight.fill_(1.0)
    bn.bias.zero_()


def _parity_se_timm(ours, peer):
    for src, dst in ((ours.fc1, peer.fc1), (ours.fc2, peer.fc2)):
        dst.weight.copy_(src.weight)
        dst.bias.copy_(src.bias)
    return 'same parameters', None


def _parity_cbam_timm(ours, peer):
    nn.init.zeros_(ours.fc1.bias)  # the peer's MLP has no bias
    nn.init.zeros_(ours.fc2.bias)
    peer.channel.fc1.weight.copy_(ours.fc1.weight)
    peer.channel.fc2.weight.copy_(ours.fc2.weight)
    # The peer stacks [mean; max] where ours stacks [max; mean].
    peer.spatial.conv.conv.weight.copy_(ours.spatial_conv.weight.flip(1))
    peer.spatial.conv.bn.load_state_dict(ours.spatial_norm.state_dict())
    return ('our MLP biases 0 (the peer has none); its spatial conv takes [mean; max], '
            'our weights flipped to match'), None


def _parity_sk_timm(ours, peer):
    for path, other in zip(ours.paths, peer.paths):
        other.conv.weight.copy_(path.conv.weight)
        other.bn.load_state_dict(path.bn.state_dict())
    peer.attn.fc_reduce.weight.copy_(ours.fc_reduce.conv.weight)
    peer.attn.bn.load_state_dict(ours.fc_reduce.bn.state_dict())
    peer.attn.fc_select.weight.copy_(ours.fc_select.weight)
    return 'same parameters (the peer without split_input, dilated 3x3 second path)', None


def _parity_non_local_timm(ours, peer):
    # The peer scales the logits by 1/sqrt(C), ours by 1/sqrt(C'): its theta holds ours
    # times sqrt(C / C').
    ratio = (ours.in_channels / ours.inter_channels) ** 0.5
    for src, dst, factor in ((ours.theta, peer.t, ratio), (ours.phi, peer.p, 1.0),
                             (ours.g, peer.g, 1.0), (ours.conv_out, peer.z, 1.0)):
        dst.weight.copy_(src.conv.weight * factor)
        dst.bias.copy_(src.conv.bias * factor)
    _bn_identity_(peer.norm)
    return ("peer's theta scaled by sqrt(C / C') (it scales logits by 1/sqrt(C)), its "
            'output BN the identity'), None


def _parity_state_dict(ours, peer):
    peer.load_state_dict(ours.state_dict())
    return 'same state dict', None


def _copy_parameters(src, dst):
    """Copy every parameter of ``src`` into the one of ``dst`` with the same name.

    (mmcv's DCN packs log a line on every ``load_state_dict``.)
    """
    dst_params = dict(dst.named_parameters())
    src_params = dict(src.named_parameters())
    if dst_params.keys() != src_params.keys():
        raise RuntimeError(f'parameter names differ: {sorted(src_params)} vs {sorted(dst_params)}')
    for name, p in src_params.items():
        dst_params[name].copy_(p)


def _parity_same_parameters(ours, other):
    _copy_parameters(ours, other)
    return 'same parameters', None


def _parity_dcn_mmcv_pack(ours, peer):
    _copy_parameters(ours, peer)
    mask_rows = slice(2 * peer.conv_offset.out_channels // 3, None)
    for layer in (ours.conv_offset, peer.conv_offset):
        layer.weight[mask_rows] = 0
        layer.bias[mask_rows] = 0
    return ('same parameters, mask logits zeroed (offsets random): ours = 2 x peer '
            '(mask 2 sigmoid vs sigmoid)'), lambda out, inputs: 2 * out


def _parity_aspp_mmseg(ours, peer):
    peer.head.load_state_dict(ours.state_dict())  # strict: conv_seg is not built
    return 'same state dict', None


# ------------------------------------------------------------ candidates per module

class _HeadFeatures(nn.Module):
    """An mmseg decode head up to its features (``_forward_feature``), without ``conv_seg``."""

    def __init__(self, head):
        super().__init__()
        head.conv_seg = nn.Identity()  # not run by _forward_feature: no params in the row
        self.head = head

    def forward(self, x):
        return self.head._forward_feature([x])


class _Levels(nn.Module):
    """Calls a multi-level neck (``module(list_of_levels)``) as ``adapter(*levels)``."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *levels):
        return self.module(list(levels))


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
    return _HeadFeatures(ASPPHead(in_channels=c, channels=channels, dilations=(1, 6, 12, 18),
                                  num_classes=1, norm_cfg=dict(type='BN')))


def _conv_reference(c, stride=1):
    return Candidate(f'nn.Conv2d 3x3{" stride 2" if stride > 1 else ""} (replaced conv)',
                     'reference', lambda: nn.Conv2d(c, c, 3, stride, 1, bias=False))


def _se(c):
    return _with_timm(
        [Candidate('ours', 'ours', lambda: mmplug.SE(c)),
         Candidate('fightingcv SEAttention', 'peer',
                   lambda: _fcv('SEAttention').SEAttention(channel=c, reduction=16),
                   _parity_se_fcv),
         Candidate('mmdet SELayer', 'peer', lambda: _mmdet_se(c), _parity_se_mmdet)],
        Candidate('timm SEModule', 'peer',
                  lambda: _timm('SEModule')(c, rd_ratio=1 / 16, rd_divisor=1), _parity_se_timm))


def _cbam(c):
    return _with_timm(
        [Candidate('ours', 'ours', lambda: mmplug.CBAM(c)),
         Candidate('fightingcv CBAMBlock', 'peer',
                   lambda: _fcv('CBAM').CBAMBlock(channel=c, reduction=16, kernel_size=7),
                   _parity_cbam_fcv)],
        Candidate('timm CbamModule', 'peer', lambda: _timm('CbamModule')(c, rd_ratio=1 / 16),
                  _parity_cbam_timm))


def _sge(c):
    return [Candidate('ours', 'ours', lambda: mmplug.SGE(c, groups=64)),
            Candidate('fightingcv SpatialGroupEnhance', 'peer',
                      lambda: _fcv('SGE').SpatialGroupEnhance(groups=64), _parity_sge_fcv)]


class _SKPerBranchLoop(mmplug.SK):
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


def _timm_sk(c):
    return _timm('SelectiveKernel')(c, c, kernel_size=[3, 5], groups=32, split_input=False,
                                    rd_channels=mmplug.SK(c).rd_channels)


def _sk(c):
    return _with_timm(
        [Candidate('ours', 'ours', lambda: mmplug.SK(c)),
         Candidate('per-branch loop (our function)', 'peer', lambda: _SKPerBranchLoop(c),
                   _parity_state_dict),
         Candidate('fightingcv SKAttention', 'peer',
                   lambda: _fcv('SKAttention').SKAttention(channel=c, kernels=[3, 5],
                                                           reduction=16, group=32, L=32),
                   _parity_sk_fcv)],
        Candidate('timm SelectiveKernel', 'peer', lambda: _timm_sk(c), _parity_sk_timm))


def _non_local(c):
    return _with_timm(
        [Candidate('ours', 'ours', lambda: mmplug.NonLocal(c)),
         Candidate('mmcv NonLocal2d', 'peer', lambda: _mmcv_non_local(c), _parity_state_dict)],
        Candidate('timm NonLocalAttn', 'peer',
                  lambda: _timm('NonLocalAttn')(c, rd_ratio=0.5, rd_divisor=1),
                  _parity_non_local_timm))


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
                  _parity_state_dict))


def _dcn(c):
    def ours(impl):
        return lambda: mmplug.DCNv2UnitMask(c, c, 3, padding=1, bias=False, impl=impl)
    return [Candidate('ours (torch)', 'ours', ours('torch')),
            Candidate('ours (mmcv op)', 'ours', ours('mmcv'), _parity_same_parameters),
            Candidate('mmcv ModulatedDeformConv2dPack', 'peer', lambda: _mmcv_dcn(c),
                      _parity_dcn_mmcv_pack),
            _conv_reference(c)]


def _asff(c):
    return [Candidate('ours', 'ours', lambda: _Levels(mmplug.ASFF([c] * 3)))]


def _aspp(c):
    channels = max(c // 8, 1)  # 2048 -> 256, DeepLabV3's width
    return [Candidate('ours', 'ours',
                      lambda: mmplug.ASPPBlock(c, channels, channels=channels,
                                               dilations=(1, 6, 12, 18), proj_kernel_size=3)),
            Candidate('mmseg ASPPHead', 'peer', lambda: _mmseg_aspp(c, channels),
                      _parity_aspp_mmseg)]


#: name -> (input kind, default stages, candidates(channels of the input))
MODULES = {
    'SE': ('feature', ALL, _se),
    'CBAM': ('feature', ALL, _cbam),
    'SGE': ('feature', ALL, _sge),
    'SK': ('feature', ALL, _sk),
    'NonLocal': ('feature', ('c3', 'c4'), _non_local),  # c2's (HW)^2 attention: --stages
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


def stage_shape(stage, batch, image, width_div=1):
    """``[N, C, H, W]`` of feature level ``stage`` for ``batch`` images of size ``image``."""
    channels, stride = STAGES[stage]
    return (batch, channels // width_div, math.ceil(image[0] / stride),
            math.ceil(image[1] / stride))


def input_shapes(kind, shape):
    """Input shapes of a module of input ``kind`` placed at a stage whose output is ``shape``."""
    n, c, h, w = shape
    if kind == 'conv':  # the bottleneck's conv2
        return [(n, c // 4, h, w)]
    if kind == 'strided':  # the stride-2 conv2 of the stage's first bottleneck
        return [(n, c // 4, 2 * h, 2 * w)]
    if kind == 'pyramid':  # this level and two coarser ones
        return [(n, c, math.ceil(h / s), math.ceil(w / s)) for s in (1, 2, 4)]
    return [tuple(shape)]


def _shape_label(shapes, where):
    text = ' + '.join('x'.join(map(str, s)) for s in shapes)
    return f'{text} ({where})' if where else text


def _where(kind, stage):
    if stage is None:
        return 'custom'
    name = stage.upper() if stage.startswith('p') else stage
    if kind == 'pyramid':  # e.g. P3-P5
        return f'{name}-{name[0]}{int(stage[1:]) + 2}'
    return {'conv': f'{name} conv2', 'strided': f'{name} strided conv2'}.get(kind, name)


# ------------------------------------------------------------ measurements

def _storage_key(t):
    storage = t.untyped_storage()
    return storage.data_ptr(), str(t.device)


def saved_tensor_bytes(module, inputs):
    """Bytes autograd keeps for the backward of ``module(*inputs)`` (the module docstring's rule).

    The sum of ``nbytes`` of the distinct storages of the saved tensors, leaving
    out the storages of ``inputs`` and of the module's parameters and buffers.

    Returns:
        tuple: ``(bytes, output)``; the output holds the graph.
    """
    exclude = {_storage_key(t) for t in (*inputs, *module.parameters(), *module.buffers())}
    kept = {}

    def pack(t):
        key = _storage_key(t)
        if key not in exclude:
            kept[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(*inputs)
    return sum(kept.values()), out


def _loss(out):
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return sum(o.sum() for o in outs)


def _first_tensor(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _randomize_(module, seed):
    """Seeded random weights (``1/sqrt(fan_in)`` for >1-D, 0.5 otherwise) and BN statistics."""
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        std = p[0].numel() ** -0.5 if p.dim() > 1 else 0.5
        p.copy_((torch.randn(p.shape, generator=gen) * std).to(p))
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


@contextlib.contextmanager
def full_fp32():
    """fp32 matmuls and convolutions in full precision: CUDA's TF32 off (Ampere and later
    run fp32 convolutions in TF32 by default, ~1e-3 relative error)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def check_parity(ours, other, parity, inputs, seed=0):
    """Compare ``other`` with ``ours`` on copies with random weights mapped by ``parity``.

    Runs the first two images of ``inputs`` in eval mode, in fp32 with TF32 off.
    Returns a dict: ``max_abs_diff``, ``scale`` (max |output|), ``ok`` (within
    ``PARITY_TOL`` relative to ``max(1, scale)``) and ``note``.
    """
    ours, other = copy.deepcopy(ours).eval(), copy.deepcopy(other).eval()
    xs = [x[:2] for x in inputs]
    with torch.no_grad(), full_fp32():
        _randomize_(ours, seed)
        _randomize_(other, seed + 1)  # every weight the mapping misses stays different
        note, transform = parity(ours, other)
        a = _first_tensor(ours(*xs))
        b = _first_tensor(other(*xs))
        if transform is not None:
            b = transform(b, xs)
    diff = (a - b).abs().max().item()
    scale = a.abs().max().item()
    return dict(max_abs_diff=diff, scale=scale, ok=diff <= PARITY_TOL * max(1.0, scale),
                note=note)


def _error(err):
    text = f'{type(err).__name__}: {err}'.splitlines()[0]
    return text if len(text) <= 120 else text[:117] + '...'


def _autocast(device, dtype):
    """Autocast to ``dtype`` (None: fp32, no autocast)."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _setup(candidate, inputs, grad_inputs, device, ours, dtype=None, compile_backend=None):
    """Build ``candidate`` and measure what does not need timing.

    Returns:
        tuple: ``(module, timed, row)``: the eager module (parity), what is timed
        (the module, or ``torch.compile`` of it) and a dict row.
    """
    row = dict(impl=candidate.impl, kind=candidate.kind, error=None, params=None, macs=None,
               saved_bytes=None, peak_bytes=None, parity=None)
    try:
        module = candidate.build().to(device).train()
        row['params'] = sum(p.numel() for p in module.parameters())
        row['macs'] = count_macs(module, lambda: module(*inputs))[0]
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        with _autocast(device, dtype):
            row['saved_bytes'], out = saved_tensor_bytes(module, grad_inputs)
        _loss(out).backward()
        del out
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
            row['peak_bytes'] = torch.cuda.max_memory_allocated(device) - before
        if candidate.parity is not None and ours is not None:
            row['parity'] = check_parity(ours, module, candidate.parity, inputs)
        timed = module if compile_backend is None else torch.compile(module,
                                                                      backend=compile_backend)
    except Exception as err:  # a missing or failing implementation fails its row only
        row['error'] = _error(err)
        module = timed = None
    return module, timed, row


def measure_group(name, shapes, device, warmup, repeats, bar=None, seed=0, dtype=None,
                  compile_backend=None):
    """Build module ``name`` and its peers for inputs of ``shapes`` and measure them.

    Timing is round-robin: each of ``warmup + repeats`` rounds times the clone
    floor and every candidate once (forward, then forward+backward), in a
    shuffled order. ``dtype`` (e.g. ``torch.bfloat16``) times under autocast to
    it; ``compile_backend`` times ``torch.compile(module, backend=...)`` (the
    warm-up rounds compile).

    Returns:
        dict: ``clone_ms``, ``clone_samples_ms`` and ``rows`` (one dict per
        candidate: ``impl``, ``kind``, ``params``, ``macs``, ``saved_bytes``,
        ``peak_bytes`` (CUDA), ``fwd_ms``, ``fwd_bwd_ms``, their samples, the
        ratios ``fwd_per_clone``, ``fwd_vs_peer``, ``fwd_bwd_vs_peer``,
        ``parity`` and ``error``).
    """
    kind, _, candidates_of = MODULES[name]
    torch.manual_seed(seed)
    inputs = [torch.randn(s, device=device) for s in shapes]
    grad_inputs = [x.detach().clone().requires_grad_() for x in inputs]
    candidates = candidates_of(shapes[0][1])
    built, rows = [], []
    ours = None
    for candidate in candidates:
        torch.manual_seed(seed)
        module, timed_module, row = _setup(candidate, inputs, grad_inputs, device, ours, dtype,
                                           compile_backend)
        if ours is None and module is not None and candidate.kind == 'ours':
            ours = module
        rows.append(row)
        built.append(timed_module)
    timed = timer(device)
    entries = [None] + [i for i, m in enumerate(built) if m is not None]  # None: clone floor

    def forward(module):
        with torch.no_grad(), _autocast(device, dtype):
            module(*inputs)

    def forward_backward(module):
        with _autocast(device, dtype):
            loss = _loss(module(*grad_inputs))
        loss.backward()

    def measure(entry):
        if entry is None:
            return timed(lambda: [x.clone() for x in inputs])
        module = built[entry]
        t_fwd = timed(lambda: forward(module))
        module.zero_grad(set_to_none=True)
        for x in grad_inputs:
            x.grad = None
        return t_fwd, timed(lambda: forward_backward(module))

    got = round_robin(entries, measure, warmup, repeats, shuffle=True,
                      on_round=None if bar is None else bar.update)
    clone_samples = got.pop(None)
    samples = {i: ([f for f, _ in s], [b for _, b in s]) for i, s in got.items()}
    clone_ms = statistics.median(clone_samples)
    for i, row in enumerate(rows):
        fwd, bwd = samples.get(i, (None, None))
        row['fwd_samples_ms'], row['fwd_bwd_samples_ms'] = fwd, bwd
        row['fwd_ms'] = statistics.median(fwd) if fwd else None
        row['fwd_bwd_ms'] = statistics.median(bwd) if bwd else None
        row['fwd_per_clone'] = None if fwd is None else row['fwd_ms'] / clone_ms
    peers = [r for r in rows if r['kind'] == 'peer' and r['fwd_ms'] is not None]
    for key, ratio in (('fwd_ms', 'fwd_vs_peer'), ('fwd_bwd_ms', 'fwd_bwd_vs_peer')):
        fastest = min((r[key] for r in peers), default=None)
        for row in rows:
            row[ratio] = (row[key] / fastest if fastest and row['kind'] != 'reference'
                          and row[key] is not None else None)
    return dict(clone_ms=clone_ms, clone_samples_ms=clone_samples, rows=rows)


def plan(names, stages=None, shape=None, batch=8, image=(224, 224), scale=1.0, width_div=1):
    """The groups to measure: a list of (module, stage or None, input shapes)."""
    image = tuple(max(1, round(s * scale)) for s in image)
    jobs = []
    for name in names:
        kind, default_stages, _ = MODULES[name]
        if shape is not None:
            jobs.append((name, None, input_shapes(kind, shape)))
            continue
        for stage in stages or default_stages:
            jobs.append((name, stage,
                         input_shapes(kind, stage_shape(stage, batch, image, width_div))))
    return jobs


def run(jobs, device, warmup, repeats, progress=True, dtype=None, compile_backend=None):
    """Measure every job of ``plan``; a list of group dicts (``measure_group`` plus labels)."""
    bar = progress_bar(len(jobs) * (warmup + repeats), 'benchmark') if progress else None
    groups = []
    try:
        for name, stage, shapes in jobs:
            kind = MODULES[name][0]
            if bar is not None:
                bar.set_description(f'{name} {stage or "custom"}')
            group = measure_group(name, shapes, device, warmup, repeats, bar, dtype=dtype,
                                  compile_backend=compile_backend)
            groups.append(dict(module=name, stage=stage, input=kind,
                               shapes=[list(s) for s in shapes],
                               shape=_shape_label(shapes, _where(kind, stage)), **group))
    finally:
        if bar is not None:
            bar.close()
    return groups


# ------------------------------------------------------------ output

#: --dtype choices: name -> autocast dtype (None: fp32 without autocast).
DTYPES = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def _precision(meta):
    text = 'fp32' if meta.get('dtype', 'fp32') == 'fp32' else f'{meta["dtype"]} autocast'
    if meta.get('compile'):
        text += f', torch.compile(backend={meta["compile"]!r})'
    return text


def to_markdown(results):
    """The table, the parity checks and the footnotes."""
    meta, groups = results['meta'], results['groups']
    cuda = meta['device'].startswith('cuda')
    lines = [
        f'Device: {meta["device_name"]}, {meta["threads"]} threads; torch {meta["torch"]}. '
        f'Medians of {meta["repeats"]} interleaved repeats after {meta["warmup"]} warm-up; '
        f'{_precision(meta)}, train mode, {meta["date"]}.' + (' **Smoke run: not a benchmark.**'
                                                if meta['smoke'] else ''), '',
        '| module | shape | impl | params | MMACs | fwd ms | fwd+bwd ms | saved MiB '
        '| fwd / clone | fwd vs fastest peer | fwd+bwd vs fastest peer |'
        + (' peak MiB |' if cuda else ''),
        '| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |'
        + (' ---: |' if cuda else '')]
    parity = []
    for g in groups:
        cells = [g['module'], g['shape'], '`x.clone()` floor', '-', '-', fmt(g['clone_ms']),
                 '-', '-', '1.00x', '', '']
        lines.append('| ' + ' | '.join(cells + (['-'] if cuda else [])) + ' |')
        for row in g['rows']:
            impl = row['impl'] + (' (ref.)' if row['kind'] == 'reference'
                                  and '(ref' not in row['impl']
                                  and 'replaced' not in row['impl'] else '')
            if row['error']:
                cells = [g['module'], g['shape'], impl, f'failed: {row["error"]}'] + [''] * 7
            else:
                cells = [g['module'], g['shape'], impl, f'{row["params"]:,}',
                         fmt(row['macs'] / 1e6), fmt(row['fwd_ms']), fmt(row['fwd_bwd_ms']),
                         fmt(row['saved_bytes'] / MIB), fmt_ratio(row['fwd_per_clone']),
                         fmt_ratio(row['fwd_vs_peer']), fmt_ratio(row['fwd_bwd_vs_peer'])]
            if cuda:
                cells.append('' if row['peak_bytes'] is None else fmt(row['peak_bytes'] / MIB))
            lines.append('| ' + ' | '.join(cells) + ' |')
            p = row['parity']
            if p is not None:
                parity.append(f'- {g["module"]} {g["shape"]}, {row["impl"]}: max |diff| '
                              f'{p["max_abs_diff"]:.2g} (max |out| {p["scale"]:.3g}; '
                              f'{"ok" if p["ok"] else "MISMATCH"}); {p["note"]}.')
    lines += ['', 'Parity with the peers (random weights mapped from ours, first two images, '
              f'eval mode; ok: max |diff| <= {PARITY_TOL:g} x max(1, max |out|)):', '']
    lines += parity or ['- none measured']
    lines += ['', 'Notes:', '',
              '1. fwd: forward under `torch.no_grad()`, train mode. fwd+bwd: forward and '
              '`out.sum().backward()`, input requiring grad. Candidates of a group are timed '
              'round-robin in one run, each round in its own (seeded) shuffled order; warm-up '
              'excluded.',
              '2. MMACs: one forward of the whole batch, FlopCounterMode FLOPs / 2 (conv, '
              'matmul, attention; elementwise, pooling, norms, `grid_sample` not counted); '
              "mmcv's deformable convs as their dense conv. Two implementations of one "
              'function can differ (a dot product as a matmul is counted, as multiply-and-sum '
              'it is not).',
              '3. saved MiB: distinct storages of the tensors autograd saves for backward '
              '(views and repeats once), without the input, parameters and buffers.',
              '4. `x.clone()` floor: one copy of the input(s), the memory-traffic floor of a '
              'module that reads its input and writes an output of the same size.',
              '5. vs fastest peer: over the fastest peer of the group (forward and '
              'forward+backward separately). "(replaced conv)"/"(reference)" rows are the '
              'plain op a conv replacement takes the place of, not peers.',
              '6. Shapes: ResNet-50 stage outputs (c2-c5) for '
              f'{meta["batch"]} images of {meta["image"][0]}x{meta["image"][1]}; conv '
              'replacements act on the stage\'s bottleneck conv2 (C/4 channels), strided ones '
              'at twice its resolution; ASFF on FPN P3-P5 (256 channels).'
              if meta['shape'] is None else
              f'6. Shape: {meta["shape"]} as the stage output (conv replacements: C/4).']
    if cuda:
        lines.append('7. peak MiB: CUDA peak allocated during one forward+backward, above what '
                     'was allocated before it.')
    return '\n'.join(lines) + '\n'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--only', nargs='+', choices=list(MODULES), metavar='MODULE',
                        help=f'modules to measure (default: all): {", ".join(MODULES)}')
    parser.add_argument('--stages', nargs='+', choices=list(STAGES),
                        help="feature levels for every module (default: each module's own)")
    parser.add_argument('--shape', type=positive(int), nargs=4, metavar=('N', 'C', 'H', 'W'),
                        help='one stage-output shape instead of the stages')
    parser.add_argument('--batch', type=positive(int), help='images per batch (default 8)')
    parser.add_argument('--image', type=positive(int), nargs=2, metavar=('H', 'W'),
                        help='image size the stage shapes derive from (default 224 224)')
    parser.add_argument('--scale', type=positive(float), default=1.0,
                        help='multiply the image size (default 1)')
    parser.add_argument('--warmup', type=non_negative_int, help='warm-up rounds (default 2)')
    parser.add_argument('--repeats', type=positive(int), help='timed rounds (default 10)')
    parser.add_argument('--threads', type=positive(int),
                        help='torch intra-op threads (default torch.get_num_threads())')
    parser.add_argument('--device', help="'cpu' or 'cuda' (default: cuda when available)")
    parser.add_argument('--dtype', choices=list(DTYPES), default='fp32',
                        help='time under autocast to this dtype (default fp32: no autocast); '
                        'parity is always checked in fp32')
    parser.add_argument('--compile', nargs='?', const='inductor', metavar='BACKEND',
                        help='time torch.compile(module, backend=BACKEND) (default backend: '
                        'inductor); the warm-up rounds compile')
    parser.add_argument('--smoke', action='store_true',
                        help='tiny shapes, 1 warm-up, 2 repeats: checks the tool, times nothing')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    parser.add_argument('--out', help='also write the markdown table to this file')
    parser.add_argument('--json', help='also write every number to this JSON file')
    args = parser.parse_args(argv)
    defaults = SMOKE if args.smoke else DEFAULTS
    for key in ('batch', 'image', 'warmup', 'repeats'):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    args.width_div = defaults['width_div']
    if args.device is None:
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if args.shape is not None and args.stages is not None:
        parser.error('--shape and --stages exclude each other')
    return args


def main(argv=None):
    """Run the benchmark (arguments as on the command line); returns the results dict."""
    args = parse_args(argv)
    device = torch.device(args.device)
    names = args.only or list(MODULES)
    jobs = plan(names, args.stages, args.shape, args.batch, args.image, args.scale,
                args.width_div)
    with num_threads(args.threads) as threads:
        groups = run(jobs, device, args.warmup, args.repeats, progress=not args.no_progress,
                     dtype=DTYPES[args.dtype], compile_backend=args.compile)
    image = [max(1, round(s * args.scale)) for s in args.image]
    meta = dict(device=str(device), device_name=device_name(device), threads=threads,
                torch=torch.__version__, dtype=args.dtype, compile=args.compile,
                timm=timm_available(), warmup=args.warmup, repeats=args.repeats,
                batch=args.batch, image=image, shape=args.shape, smoke=args.smoke,
                date=datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
                argv=list(sys.argv[1:] if argv is None else argv))
    results = dict(meta=meta, groups=groups)
    write_outputs(to_markdown(results), results, args.out, args.json, json_indent=1)
    return results


if __name__ == '__main__':
    main()
