"""One small, randomly initialised instance of every mmplug module, with its input, and what
the contract (``test_contract.py``) needs to know about the module.

The module-wide checks (contract, numerics, fuzzing, export, compile) iterate over
:data:`ZOO` so that a module added to the package is covered by adding one
entry here. Widths are small so that every check stays fast on one CPU core.

Each entry builds ``(module, inputs)`` for a batch size and a spatial size;
``inputs`` is a tuple of tensors (the necks take several levels). Modules are
returned in train mode with random (non-init) weights, so a gate that starts
at identity (e.g. zero-initialised last BN) cannot hide a broken path.
"""
import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple

import torch
from torch import nn

from _harness import randomize_

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)


@dataclass(frozen=True)
class InitCase:
    """The init a module must hold after its host's ``init_cfg`` ran (``HOST_INIT_CFG``:
    Kaiming fan-out on every ``Conv2d``, norms 0.5).

    Attributes:
        check: ``check(module)`` asserts the init on one instance found in the host.
        cfg: Arguments added to the entry's config for this case (e.g. ``identity_init``).
        own: The module re-applies an init of its own after the host's (False: its init is
            the host's, which must reach its inner layers).
    """
    check: Callable
    cfg: dict = field(default_factory=dict)
    own: bool = True


@dataclass(frozen=True)
class ZooEntry:
    """How to build one module, feed it and check its contract.

    Attributes:
        name: the registered type name (and class name).
        cfg: the keyword arguments of the zoo instance (small widths); the registry builds
            ``dict(type=name, **cfg)``. A plugin in a host gets every one but
            ``in_channels``, which the host sets.
        inputs: ``inputs(n, h, w) -> tuple of tensors``.
        kind: ``'plugin'`` (shape-preserving), ``'conv'`` (conv-layer
            replacement) or ``'neck'`` (several levels in, several out).
        has_batchnorm: BN in train mode needs more than one value per channel,
            i.e. ``n * h * w > 1`` for every BN it contains.
        min_size: the smallest spatial size the module accepts.
        position: where it goes in an mmdet/mmseg ResNet: a plugin position
            (``'after_conv1'`` ... ``'after_conv3'``) or, for a conv, the ResNet argument
            that takes it (``'conv_cfg'``, ``'dcn'``); None for neither.
        abbr: a plugin's ``_abbr_``: the name of its submodule in a host, so its checkpoint
            keys (fixed once released).
        invalid: ``(kwargs, words)`` or ``(kwargs, words, error)``: the constructor raises
            ``error`` (default ``ValueError``) with every word in its message.
        inits: the init cases (empty only for a module without parameters).
    """
    name: str
    cfg: dict
    inputs: Callable
    kind: str = 'plugin'
    has_batchnorm: bool = False
    min_size: int = 1
    position: Optional[str] = None
    abbr: Optional[str] = None
    invalid: tuple = ()
    inits: Tuple[InitCase, ...] = ()

    @property
    def cls(self):
        return getattr(_mods(), self.name)

    def build(self, **cfg):
        """The zoo instance, with ``cfg`` overriding its arguments."""
        return self.cls(**copy.deepcopy(dict(self.cfg, **cfg)))


def _x(c):
    return lambda n, h, w: (torch.randn(n, c, h, w),)


def _levels(channels, strides=None):
    strides = strides or [2 ** i for i in range(len(channels))]

    def make(n, h, w):
        return tuple(torch.randn(n, c, max(1, h // s), max(1, w // s))
                     for c, s in zip(channels, strides))
    return make


def _mods():
    import mmplug  # noqa: F401  (registers everything)
    return mmplug


# ------------------------------------------------------------------------ init checks


def _assert_zero(t, what):
    assert torch.equal(t, torch.zeros_like(t)), f'{what}: expected zeros, got {t.flatten()[:4]}'


def _assert_all(t, value, what):
    assert torch.all(t == value), f'{what}: expected all {value}, got {t.flatten()[:4]}'


def _assert_std(w, expected, rtol, what):
    std = w.std().item()
    assert abs(std / expected - 1) < rtol, f'{what}: std {std:.4g}, expected {expected:.4g}'


def _he_std(w, mode='fan_out'):
    """He normal's std for ``w`` (ReLU gain)."""
    fan = w.shape[0] * w[0, 0].numel() if mode == 'fan_out' else w[0].numel()
    return math.sqrt(2 / fan)


def _norms(m, value=1.0, zero=()):
    """Every norm in ``m`` has weight ``value`` (0 for the norms in ``zero``) and bias 0."""
    norms = [(n, x) for n, x in m.named_modules() if isinstance(x, _NORMS)]
    assert norms, f'{type(m).__name__} has no norm'
    zero = {id(x) for x in zero}
    for name, norm in norms:
        _assert_all(norm.weight, 0 if id(norm) in zero else value, f'{name}.weight')
        _assert_zero(norm.bias, f'{name}.bias')


def _convs_he(m, rtol=0.3):
    """Every conv in ``m``: He normal (fan-out) weights, zero bias. The std is read from
    weights of at least 256 values (a smaller sample is too noisy for ``rtol``)."""
    convs = [(n, c) for n, c in m.named_modules() if isinstance(c, nn.Conv2d)]
    assert any(c.weight.numel() >= 256 for _, c in convs), f'{type(m).__name__}: no conv'
    for name, conv in convs:
        if conv.bias is not None:
            _assert_zero(conv.bias, f'{name}.bias')
        if conv.weight.numel() >= 256:
            _assert_std(conv.weight, _he_std(conv.weight), rtol, f'{name}.weight')


def _conv_module_init(m, zero=()):
    """mmcv ``ConvModule``'s init (as mmseg's heads): norms 1 and 0, He fan-out convs."""
    _norms(m, zero=zero)
    _convs_he(m)


def _se_init(m):
    # He normal, fan-in (the paper); the host's Kaiming is fan-out, the stds swapped.
    for name in ('fc1', 'fc2'):
        fc = getattr(m, name)
        _assert_zero(fc.bias, f'{name}.bias')
        _assert_std(fc.weight, _he_std(fc.weight, 'fan_in'), 0.1, f'{name}.weight')


def _cbam_init(m):
    # The authors': spatial BN weight 0 (the spatial gate starts at exactly 0.5), the MLP
    # with PyTorch's default init, bounded by 1/sqrt(fan_in) (the host's Kaiming is not).
    _assert_zero(m.spatial_norm.weight, 'spatial_norm.weight')
    _assert_zero(m.spatial_norm.bias, 'spatial_norm.bias')
    for name in ('fc1', 'fc2'):
        fc = getattr(m, name)
        _assert_zero(fc.bias, f'{name}.bias')
        bound = fc.weight[0].numel() ** -0.5
        assert fc.weight.abs().max() <= bound, f'{name}.weight exceeds {bound:.4g}'


def _sge_init(m):
    # The paper's gamma = 0, beta = 1.
    _assert_zero(m.weight, 'weight')
    _assert_all(m.bias, 1, 'bias')


def _sk_init(m):
    # BN 1 and 0; the selection FCs N(0, 0.01^2) (the authors' Caffe model).
    for name, bn in [(f'paths.{i}.bn', p.bn) for i, p in enumerate(m.paths)] + [
            ('fc_reduce.bn', m.fc_reduce.bn)]:
        _assert_all(bn.weight, 1, f'{name}.weight')
        _assert_zero(bn.bias, f'{name}.bias')
    w = m.fc_select.weight
    assert abs(w.std().item() - 0.01) < 0.001 and abs(w.mean().item()) < 0.001, (
        f'fc_select.weight: mean {w.mean().item():.3g}, std {w.std().item():.3g}, '
        'expected N(0, 0.01^2)')


def _non_local_init(m):
    # theta/phi/g N(0, 0.01^2) with zero bias, zero output projection: the identity.
    for name in ('theta', 'phi', 'g'):
        conv = getattr(m, name).conv
        _assert_std(conv.weight, 0.01, 0.2, f'{name}.conv.weight')
        _assert_zero(conv.bias, f'{name}.conv.bias')
    _assert_zero(m.conv_out.conv.weight, 'conv_out.conv.weight')
    _assert_zero(m.conv_out.conv.bias, 'conv_out.conv.bias')


def _assert_identity(m):
    x = torch.randn(2, m.in_channels, 5, 7)
    with torch.no_grad():
        assert torch.equal(m(x), x), f'{type(m).__name__} is not the identity'


def _stn_init(m):
    # Regression layer weight 0, bias the identity transform.
    _assert_zero(m.loc_fc.weight, 'loc_fc.weight')
    assert torch.equal(m.loc_fc.bias, torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])), (
        f'loc_fc.bias: {m.loc_fc.bias.tolist()}, expected the identity transform')
    _assert_identity(m)


def _strip_pooling_init(m):
    # ConvModule init (norms 1 and 0, He fan-out convs), as the authors' code.
    _conv_module_init(m)


def _strip_pooling_identity_init(m):
    # Zero fusion conv: gate_scale * sigmoid(0) = 1, the identity.
    _norms(m)
    _assert_zero(m.fuse.conv.weight, 'fuse.conv.weight')
    _assert_zero(m.fuse.conv.bias, 'fuse.conv.bias')
    _assert_identity(m)


def _coord_conv_plugin_init(m):
    # Zero projection: the identity.
    _assert_zero(m.proj.weight, 'proj.weight')
    _assert_zero(m.proj.bias, 'proj.bias')
    _assert_identity(m)


def _coord_conv_init(m):
    # Zero weights on the coordinate inputs; the host's init on the features' (He fan-out).
    c = m.in_channels // m.groups
    _assert_zero(m.weight[:, c:], 'weight on the coordinates')
    _assert_std(m.weight[:, :c], _he_std(m.weight), 0.3, 'weight on the features')


def _hosts_conv_init(m):
    # No init of its own: the host's (Kaiming fan-out, norms 0.5) reaches every inner layer.
    for name, conv in m.named_modules():
        if isinstance(conv, nn.Conv2d):
            where = f'{name}.' if name else ''
            std, expected = conv.weight.std().item(), _he_std(conv.weight)
            assert 0.5 < std / expected < 2, (
                f"{where}weight: std {std:.3g}, the host's Kaiming gives {expected:.3g}")
            if conv.bias is not None:
                _assert_zero(conv.bias, f'{where}bias')
    if any(isinstance(x, _NORMS) for x in m.modules()):
        _norms(m, value=0.5)


def _dcn_init(m):
    # mmcv's: zero offset/mask conv (offsets 0, mask 2 * sigmoid(0) = 1), weight
    # re-drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    _assert_zero(m.conv_offset.weight, 'conv_offset.weight')
    _assert_zero(m.conv_offset.bias, 'conv_offset.bias')
    bound = (m.in_channels * m.weight[0, 0].numel()) ** -0.5
    assert m.weight.abs().max() <= bound, f'weight exceeds {bound:.4g}'


def _asff_init(m):
    # ConvModule init, then zero logit convs: every level weighted 1/N.
    _conv_module_init(m)
    for i, fusion in enumerate(m.fusions):
        _assert_zero(fusion.weight_logits.weight, f'fusions.{i}.weight_logits.weight')
        _assert_zero(fusion.weight_logits.bias, f'fusions.{i}.weight_logits.bias')


def _mpm_zero_init_residual(m):
    # The last norm of every block at 0: each block starts as act(x).
    blocks = [b for b in m.modules() if type(b).__name__ == 'MPMBlock']
    assert blocks
    _conv_module_init(m, zero=[block.expand.norm for block in blocks])


# ------------------------------------------------------------------------ entries


def _entries():
    return [
        ZooEntry('SE', dict(in_channels=32), _x(32), position='after_conv3', abbr='se',
                 inits=(InitCase(_se_init),), invalid=(
                     (dict(in_channels=0), ['in_channels', '0']),
                     (dict(in_channels=64.0), ['in_channels', '64.0']),
                     (dict(in_channels=True), ['in_channels', 'True']),
                     (dict(in_channels=64, rd_ratio=0), ['rd_ratio', '0']),
                     (dict(in_channels=64, rd_ratio=1.5), ['rd_ratio', '1.5']),
                     (dict(in_channels=64, rd_channels=0), ['rd_channels', '0']),
                     (dict(in_channels=64, rd_divisor=0), ['rd_divisor', '0']),
                     (dict(in_channels=64, act_cfg='ReLU'), ['act_cfg', "'ReLU'"]),
                     (dict(in_channels=64, gate_cfg=None), ['gate_cfg', 'None']),
                     (dict(in_channels=64, gate_cfg=dict(bias=3.0)), ['gate_cfg', 'type']),
                 )),
        ZooEntry('CBAM', dict(in_channels=32), _x(32), has_batchnorm=True,
                 position='after_conv3', abbr='cbam', inits=(InitCase(_cbam_init),), invalid=(
                     (dict(in_channels=0), ['in_channels', '0']),
                     (dict(in_channels=64.0), ['in_channels', '64.0']),
                     (dict(in_channels=False), ['in_channels', 'False']),
                     (dict(in_channels=64, rd_ratio=0), ['rd_ratio', '0']),
                     (dict(in_channels=64, rd_channels=-2), ['rd_channels', '-2']),
                     (dict(in_channels=64, kernel_size=6), ['kernel_size', '6', 'odd']),
                     (dict(in_channels=64, kernel_size=0), ['kernel_size', '0']),
                     (dict(in_channels=64, kernel_size=7.0), ['kernel_size', '7.0']),
                     (dict(in_channels=64, norm_cfg='BN'), ['norm_cfg', "'BN'"]),
                     (dict(in_channels=64, act_cfg=dict(inplace=True)), ['act_cfg', 'type']),
                 )),
        ZooEntry('SGE', dict(in_channels=32, groups=8), _x(32), position='after_conv3',
                 abbr='sge', inits=(InitCase(_sge_init),), invalid=(
                     (dict(in_channels=100, groups=64), ['100', '64', 'divisible']),
                     (dict(in_channels=64, groups=0), ['groups', '0']),
                     (dict(in_channels=0), ['in_channels', '0']),
                     (dict(in_channels=64.0, groups=8), ['in_channels', '64.0']),
                     (dict(in_channels=True, groups=1), ['in_channels', 'True']),
                     (dict(in_channels=64, groups=8, eps=0), ['eps', '0']),
                 )),
        ZooEntry('SK', dict(in_channels=32, groups=8, min_channels=8), _x(32),
                 has_batchnorm=True, position='after_conv2', abbr='sk',
                 inits=(InitCase(_sk_init),), invalid=(
                     (dict(in_channels=100, groups=32), ['100', '32', 'divisible']),
                     (dict(in_channels=64, groups=0), ['groups', '0']),
                     (dict(in_channels=0), ['in_channels', '0']),
                     (dict(in_channels=64.0, groups=8), ['in_channels', '64.0']),
                     (dict(in_channels=True, groups=1), ['in_channels', 'True']),
                     (dict(in_channels=64, dilations=(1,)), ['dilations', '(1,)']),
                     (dict(in_channels=64, dilations=(1, 0)), ['dilations', '(1, 0)']),
                     (dict(in_channels=64, dilations=2), ['dilations', '2']),
                     (dict(in_channels=64, rd_ratio=2), ['rd_ratio', '2']),
                     (dict(in_channels=64, min_channels=0), ['min_channels', '0']),
                     (dict(in_channels=64, norm_cfg='BN'), ['norm_cfg', 'BN']),
                 )),
        ZooEntry('NonLocal', dict(in_channels=16), _x(16), position='after_conv3',
                 abbr='nonlocal_block', inits=(InitCase(_non_local_init),), invalid=(
                     (dict(in_channels=0), ['in_channels', '0']),
                     (dict(in_channels=64.0), ['in_channels', '64.0']),
                     (dict(in_channels=True), ['in_channels', 'True']),
                     (dict(in_channels=64, use_scale=1), ['use_scale', '1']),
                     (dict(in_channels=64, sub_sample='yes'), ['sub_sample', 'yes']),
                     (dict(in_channels=64, rd_ratio=0), ['rd_ratio', '0']),
                     (dict(in_channels=64, rd_channels=0), ['rd_channels', '0']),
                     (dict(in_channels=64, norm_cfg='BN'), ['norm_cfg', 'BN']),
                 )),
        ZooEntry('STN', dict(in_channels=16), _x(16), position='after_conv3', abbr='stn',
                 inits=(InitCase(_stn_init),), invalid=(
                     (dict(in_channels=0), ['in_channels', '0']),
                     (dict(in_channels=True), ['in_channels', 'True']),
                     (dict(in_channels=64, rd_ratio=0), ['rd_ratio', '0']),
                     (dict(in_channels=64, rd_channels=0), ['rd_channels', '0']),
                     (dict(in_channels=64, num_convs=0), ['num_convs', '0']),
                     (dict(in_channels=64, padding_mode='reflection'),
                      ['padding_mode', 'reflection']),
                     (dict(in_channels=64, norm_cfg='BN'), ['norm_cfg', 'BN']),
                 )),
        ZooEntry('StripPooling', dict(in_channels=16), _x(16), has_batchnorm=True,
                 position='after_conv2', abbr='strip_pooling',
                 inits=(InitCase(_strip_pooling_init),
                        InitCase(_strip_pooling_identity_init, dict(identity_init=True))),
                 invalid=(
                     (dict(in_channels=0), ['in_channels', '0']),
                     (dict(in_channels=16.0), ['in_channels', '16.0']),
                     (dict(in_channels=16, rd_ratio=0), ['rd_ratio', '0']),
                     (dict(in_channels=16, rd_ratio=1.5), ['rd_ratio', '1.5']),
                     (dict(in_channels=16, rd_channels=0), ['rd_channels', '0']),
                     (dict(in_channels=16, identity_init='yes'), ['identity_init', 'yes']),
                     (dict(in_channels=16, norm_cfg='BN'), ['norm_cfg', 'BN']),
                     (dict(in_channels=16, act_cfg=dict(inplace=True)), ['act_cfg', 'inplace']),
                 )),
        ZooEntry('CoordConvPlugin', dict(in_channels=16), _x(16), position='after_conv2',
                 abbr='coord_conv', inits=(InitCase(_coord_conv_plugin_init),), invalid=(
                     (dict(in_channels=0), ['in_channels', '0']),
                     (dict(in_channels=16.0), ['in_channels', '16.0']),
                     (dict(in_channels=16, kernel_size=2), ['kernel_size', '2', 'odd']),
                     (dict(in_channels=16, kernel_size=True), ['kernel_size', 'True']),
                     (dict(in_channels=16, with_r='yes'), ['with_r', 'yes']),
                     (dict(in_channels=16, conv_cfg='Conv2d'), ['conv_cfg', 'Conv2d']),
                 )),
        ZooEntry('CoordConv2d',
                 dict(in_channels=16, out_channels=24, kernel_size=3, padding=1), _x(16),
                 kind='conv', position='conv_cfg', inits=(InitCase(_coord_conv_init),),
                 invalid=(
                     (dict(in_channels=0, out_channels=8, kernel_size=3), ['in_channels', '0']),
                     (dict(in_channels=8.0, out_channels=8, kernel_size=3),
                      ['in_channels', '8.0']),
                     (dict(in_channels=8, out_channels=True, kernel_size=3),
                      ['out_channels', 'True']),
                     (dict(in_channels=8, out_channels=8, kernel_size=3, groups=3),
                      ['groups', '3', '8']),
                     (dict(in_channels=8, out_channels=8, kernel_size=3, with_r=1),
                      ['with_r', '1']),
                     (dict(in_channels=8, out_channels=8, kernel_size=3, bias='auto'),
                      ['bias', 'auto']),
                 )),
        ZooEntry('GhostConv2d',
                 dict(in_channels=16, out_channels=24, kernel_size=3, padding=1), _x(16),
                 kind='conv', position='conv_cfg',
                 inits=(InitCase(_hosts_conv_init, dict(norm_cfg=dict(type='BN')), own=False),),
                 invalid=(
                     (dict(in_channels=0, out_channels=8, kernel_size=3), ['in_channels', '0']),
                     (dict(in_channels=8, out_channels=8.0, kernel_size=3),
                      ['out_channels', '8.0']),
                     (dict(in_channels=8, out_channels=8, kernel_size=0), ['kernel_size', '0']),
                     (dict(in_channels=8, out_channels=8, kernel_size=3, stride=(2, 0)),
                      ['stride', '(2, 0)']),
                     (dict(in_channels=8, out_channels=8, kernel_size=3, padding=-1),
                      ['padding', '-1']),
                     (dict(in_channels=8, out_channels=8, kernel_size=3, dilation=0),
                      ['dilation', '0']),
                     (dict(in_channels=8, out_channels=8, kernel_size=3, ratio=1),
                      ['ratio', '1']),
                     (dict(in_channels=8, out_channels=8, kernel_size=3, dw_size=4),
                      ['dw_size', '4', 'odd']),
                     (dict(in_channels=8, out_channels=8, kernel_size=3, dw_size=True),
                      ['dw_size', 'True']),
                     (dict(in_channels=6, out_channels=8, kernel_size=3, groups=4),
                      ['groups', '4', '6']),
                     (dict(in_channels=8, out_channels=12, kernel_size=3, groups=4),
                      ['groups', '4', '= 6']),
                     (dict(in_channels=8, out_channels=8, kernel_size=3, bias='auto'),
                      ['bias', 'auto']),
                     (dict(in_channels=8, out_channels=8, kernel_size=3, norm_cfg='BN'),
                      ['norm_cfg', 'BN']),
                 )),
        ZooEntry('BlurConv2d',
                 dict(in_channels=16, out_channels=24, kernel_size=3, stride=2, padding=1),
                 _x(16), kind='conv', min_size=2, position='conv_cfg',
                 inits=(InitCase(_hosts_conv_init, own=False),), invalid=(
                     (dict(in_channels=4, out_channels=4, kernel_size=3, stride=(2, 1)),
                      ['stride', '(2, 1)']),
                     (dict(in_channels=4, out_channels=4, kernel_size=3, stride=0),
                      ['stride', '0']),
                     (dict(in_channels=4, out_channels=4, kernel_size=3, padding='same'),
                      ['padding', 'same']),
                     (dict(in_channels=4, out_channels=4, kernel_size=3, padding_mode='reflect'),
                      ['padding_mode', 'reflect']),
                     (dict(in_channels=4, out_channels=4, kernel_size=3, filt_size=9),
                      ['filt_size', '9']),
                     (dict(in_channels=4, out_channels=4, kernel_size=3, pad_mode='mirror'),
                      ['pad_mode', 'mirror']),
                     (dict(in_channels=4, out_channels=4, kernel_size=3, blur_first=1),
                      ['blur_first', '1']),
                 )),
        # No parameters (a fixed filter buffer), so no init to keep.
        ZooEntry('BlurPool2d', dict(in_channels=16), _x(16), kind='conv', min_size=2, invalid=(
            (dict(in_channels=0), ['in_channels', '0']),
            (dict(in_channels=4, stride=0), ['stride', '0']),
            (dict(in_channels=4, filt_size=0), ['filt_size', '0', '1..7']),
            (dict(in_channels=4, filt_size=8), ['filt_size', '8']),
            (dict(in_channels=4, filt_size=3.0), ['filt_size', '3.0']),
            (dict(in_channels=4, pad_mode='refl'), ['pad_mode', 'refl', 'reflect']),
        )),
        ZooEntry('DCNv2UnitMask',
                 dict(in_channels=16, out_channels=24, kernel_size=3, padding=1), _x(16),
                 kind='conv', position='dcn',
                 inits=(InitCase(_dcn_init),), invalid=(
                     (dict(in_channels=0, out_channels=8, kernel_size=3), ['in_channels', '0']),
                     (dict(in_channels=8, out_channels=8, kernel_size=0), ['kernel_size', '0']),
                     (dict(in_channels=8, out_channels=8, kernel_size=3, stride=0),
                      ['stride', '0']),
                     (dict(in_channels=8, out_channels=8, kernel_size=3, padding=-1),
                      ['padding', '-1']),
                     (dict(in_channels=8, out_channels=8, kernel_size=3, dilation=(1, 0)),
                      ['dilation', '(1, 0)']),
                     (dict(in_channels=8, out_channels=8, kernel_size=3, groups=3),
                      ['groups', '3', '8']),
                     (dict(in_channels=8, out_channels=8, kernel_size=3, deform_groups=3),
                      ['deform_groups', '3', '8']),
                     (dict(in_channels=8, out_channels=8, kernel_size=3, bias='auto'),
                      ['bias', 'auto']),
                     (dict(in_channels=8, out_channels=8, kernel_size=3, impl='cuda'),
                      ['impl', 'cuda', 'torch']),
                 )),
        ZooEntry('ASFF', dict(in_channels=[16, 16, 16], compress_channels=4),
                 _levels([16, 16, 16]), kind='neck', has_batchnorm=True,
                 inits=(InitCase(_asff_init),), invalid=(
                     (dict(in_channels=[]), ['in_channels', '[]']),
                     (dict(in_channels=256), ['in_channels', 'list', '256']),
                     (dict(in_channels=[256]), ['at least 2', '[256]']),
                     (dict(in_channels=[256, 0]), ['in_channels[1]', '0']),
                     (dict(in_channels=[256, 256], out_channels=0), ['out_channels', '0']),
                     (dict(in_channels=[256, 256], out_channels=[256]),
                      ['out_channels', '2 ints', '[256]']),
                     (dict(in_channels=[256, 256], out_channels=[256, -1]),
                      ['out_channels[1]', '-1']),
                     (dict(in_channels=[256, 256], strides=[8]), ['strides', '2 ints', '[8]']),
                     (dict(in_channels=[256, 256], strides=[8, 0]), ['strides[1]', '0']),
                     (dict(in_channels=[256, 256], strides=[8, 16.0]), ['strides[1]', '16.0']),
                     (dict(in_channels=[64] * 3, strides=[8, 12, 16]),
                      ['power of 2', 'strides[1] = 12', '8']),
                     (dict(in_channels=[64] * 3, strides=[32, 16, 24]),
                      ['power of 2', 'strides[2] = 24']),
                     (dict(in_channels=[256, 256], compress_channels=0),
                      ['compress_channels', '0']),
                     (dict(in_channels=[256, 256], norm_cfg='BN'), ['norm_cfg', "'BN'"]),
                 )),
        # The blocks end in a ReLU whose output the Bottleneck's in-place `out += identity`
        # after conv3 breaks in backward (test_plugin_output_may_be_modified_in_place): their
        # position here is after conv2.
        ZooEntry('RFBBlock', dict(in_channels=16), _x(16), has_batchnorm=True,
                 position='after_conv2', abbr='rfb', inits=(InitCase(_conv_module_init),),
                 invalid=(
                     (dict(in_channels=0), ['in_channels', '0']),
                     (dict(in_channels=64.0), ['in_channels', '64.0']),
                     (dict(in_channels=True), ['in_channels', 'True']),
                     (dict(in_channels=64, out_channels=0), ['out_channels', '0']),
                     (dict(in_channels=64, rd_ratio=0), ['rd_ratio', '0']),
                     (dict(in_channels=64, rd_ratio=1.5), ['rd_ratio', '1.5']),
                     (dict(in_channels=64, rd_channels=-2), ['rd_channels', '-2']),
                     (dict(in_channels=64, branch_dilations=()), ['branch_dilations', '()']),
                     (dict(in_channels=64, branch_dilations=(1, 0, 5)),
                      ['branch_dilations', '(1, 0, 5)']),
                     (dict(in_channels=64, branch_dilations=(1, 3.0)),
                      ['branch_dilations', '3.0']),
                     (dict(in_channels=64, branch_dilations=(1, True)),
                      ['branch_dilations', 'True']),
                     (dict(in_channels=64, branch_dilations=3), ['branch_dilations', '3']),
                     (dict(in_channels=64, residual_scale=0), ['residual_scale', '0']),
                     (dict(in_channels=64, residual_scale=-0.1), ['residual_scale', '-0.1']),
                     (dict(in_channels=64, residual_scale=float('nan')),
                      ['residual_scale', 'nan']),
                     (dict(in_channels=64, residual_scale=True), ['residual_scale', 'True']),
                     (dict(in_channels=64, residual_scale='0.1'), ['residual_scale', "'0.1'"]),
                     (dict(in_channels=64, norm_cfg='BN'), ['norm_cfg', "'BN'"]),
                     (dict(in_channels=64, act_cfg=dict(inplace=True)), ['act_cfg', 'inplace']),
                     (dict(in_channels=64, conv_cfg=[]), ['conv_cfg', '[]']),
                 )),
        ZooEntry('RFB', dict(in_channels=[16, 24]), _levels([16, 24]), kind='neck',
                 has_batchnorm=True, inits=(InitCase(_conv_module_init),), invalid=(
                     (dict(in_channels=[]), ['in_channels', '[]']),
                     (dict(in_channels=256), ['in_channels', '256']),
                     (dict(in_channels=[256, 0]), ['in_channels[1]', '0']),
                     (dict(in_channels=[256, 256], levels=[2]), ['levels', '[2]']),
                     (dict(in_channels=[256, 256], levels=[0, 0]), ['levels', '[0, 0]']),
                     (dict(in_channels=[256, 128], out_channels=[64, 64], levels=[0]),
                      ['level 1', 'out_channels[1] = 64', '128']),
                     (dict(in_channels=[256, 128], out_channels=[64]), ['out_channels', '[64]']),
                     (dict(in_channels=[32, 32], residual_scale=0),
                      ['RFBBlock', 'residual_scale', '0']),
                     (dict(in_channels=[32, 32], branch_dilations=(1, -3)),
                      ['branch_dilations', '(1, -3)']),
                     (dict(in_channels=[32, 32], mid_channels=8), ['mid_channels'], TypeError),
                 )),
        ZooEntry('ASPPBlock', dict(in_channels=16, channels=8, dilations=(1, 2)), _x(16),
                 has_batchnorm=True, position='after_conv2', abbr='aspp',
                 inits=(InitCase(_conv_module_init),), invalid=(
                     (dict(in_channels=0), ['in_channels', '0']),
                     (dict(in_channels=16.0), ['in_channels', '16.0']),
                     (dict(in_channels=16, out_channels=0), ['out_channels', '0']),
                     (dict(in_channels=16, channels=True), ['channels', 'True']),
                     (dict(in_channels=16, dilations=()), ['dilations', '()']),
                     (dict(in_channels=16, dilations=(1, 0)), ['dilations', '(1, 0)']),
                     (dict(in_channels=16, dilations=(1, 6.0)), ['dilations', '6.0']),
                     (dict(in_channels=16, dilations=6), ['dilations', '6']),
                     (dict(in_channels=16, dilations=(True, 2)), ['dilations', 'True']),
                     (dict(in_channels=16, image_pool=1), ['image_pool', '1']),
                     (dict(in_channels=16, proj_kernel_size=2),
                      ['proj_kernel_size', 'odd', '2']),
                     (dict(in_channels=16, proj_kernel_size=0), ['proj_kernel_size', '0']),
                     (dict(in_channels=16, dropout_ratio=1.0), ['dropout_ratio', '1.0']),
                     (dict(in_channels=16, dropout_ratio=-0.1), ['dropout_ratio', '-0.1']),
                     (dict(in_channels=16, norm_cfg='BN'), ['norm_cfg', "'BN'"]),
                     (dict(in_channels=16, act_cfg=dict(inplace=True)), ['act_cfg', 'type']),
                 )),
        ZooEntry('ASPP', dict(in_channels=[16, 24], channels=8, dilations=(1, 2)),
                 _levels([16, 24]), kind='neck', has_batchnorm=True,
                 inits=(InitCase(_conv_module_init),), invalid=(
                     (dict(in_channels=256), ['in_channels', 'list', '256']),
                     (dict(in_channels=[]), ['in_channels', '[]']),
                     (dict(in_channels=[16, 0]), ['in_channels[1]', '0']),
                     (dict(in_channels=[16, 32], levels=[2]), ['levels', '[0, 1]', '[2]']),
                     (dict(in_channels=[16, 32], levels=[1, 1]), ['levels', '[1, 1]']),
                     (dict(in_channels=[16, 32], out_channels=[16]), ['out_channels', '[16]']),
                     (dict(in_channels=[16, 32], levels=[1], out_channels=[8, 8]),
                      ['level 0', 'passes through', '16', 'out_channels[0] = 8']),
                     (dict(in_channels=[16, 32], dilations=(1, -6)),
                      ['ASPPBlock:', 'dilations', '-6']),
                     (dict(in_channels=[16, 32], proj_kernel_size=4),
                      ['ASPPBlock:', 'proj_kernel_size', '4']),
                     (dict(in_channels=[16, 32], channels=0), ['ASPPBlock:', 'channels', '0']),
                 )),
        ZooEntry('MPMBlock', dict(in_channels=16, pool_sizes=(4, 2)), _x(16),
                 has_batchnorm=True, position='after_conv2', abbr='mpm',
                 inits=(InitCase(_conv_module_init),
                        InitCase(_mpm_zero_init_residual, dict(zero_init_residual=True))),
                 invalid=(
                     (dict(in_channels=0), ['in_channels', '0']),
                     (dict(in_channels=16.0), ['in_channels', '16.0']),
                     (dict(in_channels=True), ['in_channels', 'True']),
                     (dict(in_channels=16, out_channels=0), ['out_channels', '0']),
                     (dict(in_channels=16, rd_channels=-2), ['rd_channels', '-2']),
                     (dict(in_channels=16, rd_channels=2.5), ['rd_channels', '2.5']),
                     (dict(in_channels=16, rd_ratio=0), ['rd_ratio', '(0, 1]', '0']),
                     (dict(in_channels=16, rd_ratio=1.5), ['rd_ratio', '1.5']),
                     (dict(in_channels=16, rd_ratio='1/4'), ['rd_ratio', "'1/4'"]),
                     (dict(in_channels=16, rd_ratio=True), ['rd_ratio', 'True']),
                     (dict(in_channels=16, rd_divisor=0), ['rd_divisor', '0']),
                     (dict(in_channels=16, pool_sizes=()), ['pool_sizes', '()']),
                     (dict(in_channels=16, pool_sizes=20), ['pool_sizes', '20']),
                     (dict(in_channels=16, pool_sizes=(20, 0)), ['pool_sizes[1]', '0']),
                     (dict(in_channels=16, pool_sizes=(20, 2.5)), ['pool_sizes[1]', '2.5']),
                     (dict(in_channels=16, pool_sizes=((3, 4, 5), )),
                      ['pool_sizes[0]', '(3, 4, 5)']),
                     (dict(in_channels=16, align_corners='no'), ['align_corners', 'no']),
                     (dict(in_channels=16, zero_init_residual=1), ['zero_init_residual', '1']),
                     (dict(in_channels=16, norm_cfg='BN'), ['norm_cfg', 'BN']),
                     (dict(in_channels=16, act_cfg=dict(inplace=True)), ['act_cfg', 'inplace']),
                 )),
        ZooEntry('MPM', dict(in_channels=[16, 24], pool_sizes=(4, 2)), _levels([16, 24]),
                 kind='neck', has_batchnorm=True,
                 inits=(InitCase(_conv_module_init),
                        InitCase(_mpm_zero_init_residual,
                                 dict(zero_init_residual=True, num_blocks=2))),
                 invalid=(
                     (dict(in_channels=[8, 16], num_blocks=0), ['MPM', 'num_blocks', '0']),
                     (dict(in_channels=[8, 16], num_blocks=2.0), ['MPM', 'num_blocks', '2.0']),
                     (dict(in_channels=[]), ['MPM', 'in_channels', '[]']),
                     (dict(in_channels=[8, 0]), ['MPM', 'in_channels[1]', '0']),
                     (dict(in_channels=[8, 16], levels=[2]), ['MPM', 'levels', '[2]']),
                     (dict(in_channels=[8, 16], levels=[1, 1]), ['MPM', 'levels', '[1, 1]']),
                     (dict(in_channels=[8, 16], levels=[1], out_channels=[4, 16]),
                      ['out_channels[0]', '4']),
                     (dict(in_channels=[8, 16], out_channels=[4]), ['out_channels', '[4]']),
                     (dict(in_channels=[8, 16], pool_sizes=(20, -1)),
                      ['MPMBlock', 'pool_sizes[1]', '-1']),
                     (dict(in_channels=[8, 16], rd_channels=0), ['MPMBlock', 'rd_channels', '0']),
                     (dict(in_channels=[8, 16], rd_ratio=2), ['MPMBlock', 'rd_ratio', '2']),
                     # Named before any block is built, with the names that are accepted.
                     *((dict(in_channels=[8, 16], **kwargs),
                        ['MPM:', name, 'rd_ratio, rd_channels, rd_divisor, pool_sizes'],
                        TypeError)
                       for kwargs, name in [(dict(pool_size=(4, 2)), "'pool_size'"),
                                            (dict(mid_channels=4), "'mid_channels'"),
                                            (dict(rd_ration=0.5), "'rd_ration'")]),
                 )),
    ]


#: Every registered mmplug module except the ``PluggedBackbone`` wrapper.
ZOO = {e.name: e for e in _entries()}


def make(name, n=2, h=8, w=8, seed=0) -> Tuple[torch.nn.Module, tuple]:
    """Build ``ZOO[name]`` with random weights and inputs (deterministic per seed)."""
    entry = ZOO[name]
    torch.manual_seed(seed)
    module = entry.build()
    randomize_(module, seed=seed)
    module.train()
    return module, entry.inputs(n, h, w)


def run(name, module, inputs):
    """Call ``module`` the way its kind expects; always returns a list of tensors."""
    out = module(list(inputs)) if ZOO[name].kind == 'neck' else module(*inputs)
    return list(out) if isinstance(out, (list, tuple)) else [out]
