"""One small, randomly initialised instance of every mmplug module, with its input.

The module-wide checks (numerics, fuzzing, export, compile) iterate over
:data:`ZOO` so that a module added to the package is covered by adding one
entry here. Widths are small so that every check stays fast on one CPU core.

Each entry builds ``(module, inputs)`` for a batch size and a spatial size;
``inputs`` is a tuple of tensors (the necks take several levels). Modules are
returned in train mode with random (non-init) weights, so a gate that starts
at identity (e.g. zero-initialised last BN) cannot hide a broken path.
"""
from dataclasses import dataclass, field
from typing import Callable, Tuple

import torch

from _harness import randomize_


@dataclass(frozen=True)
class ZooEntry:
    """How to build one module and feed it.

    Attributes:
        name: the registered type name.
        build: ``build() -> nn.Module`` (small widths).
        inputs: ``inputs(n, h, w) -> tuple of tensors``.
        kind: ``'plugin'`` (shape-preserving), ``'conv'`` (conv-layer
            replacement) or ``'neck'`` (several levels in, several out).
        has_batchnorm: BN in train mode needs more than one value per channel,
            i.e. ``n * h * w > 1`` for every BN it contains.
        uses_mmcv_ops: the module (or one of its paths) calls mmcv's compiled
            ops, which neither ONNX nor torch.compile can trace.
        min_size: the smallest spatial size the module accepts.
    """
    name: str
    build: Callable
    inputs: Callable
    kind: str = 'plugin'
    has_batchnorm: bool = False
    uses_mmcv_ops: bool = False
    min_size: int = 1
    cfg: dict = field(default_factory=dict)


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


def _entries():
    m = _mods()
    return [
        ZooEntry('SE', lambda: m.SE(32), _x(32)),
        ZooEntry('CBAM', lambda: m.CBAM(32), _x(32), has_batchnorm=True),
        ZooEntry('SGE', lambda: m.SGE(32, groups=8), _x(32)),
        ZooEntry('SK', lambda: m.SK(32, groups=8, min_channels=8), _x(32), has_batchnorm=True),
        ZooEntry('NonLocal', lambda: m.NonLocal(16), _x(16)),
        ZooEntry('STN', lambda: m.STN(16), _x(16)),
        ZooEntry('StripPooling', lambda: m.StripPooling(16), _x(16), has_batchnorm=True),
        ZooEntry('CoordConvPlugin', lambda: m.CoordConvPlugin(16), _x(16)),
        ZooEntry('CoordConv2d', lambda: m.CoordConv2d(16, 24, 3, padding=1), _x(16), kind='conv'),
        ZooEntry('GhostConv2d', lambda: m.GhostConv2d(16, 24, 3, padding=1), _x(16), kind='conv'),
        ZooEntry('BlurConv2d', lambda: m.BlurConv2d(16, 24, 3, stride=2, padding=1), _x(16),
                 kind='conv', min_size=2),
        ZooEntry('BlurPool2d', lambda: m.BlurPool2d(16), _x(16), kind='conv', min_size=2),
        ZooEntry('DCNv2UnitMask', lambda: m.DCNv2UnitMask(16, 24, 3, padding=1), _x(16),
                 kind='conv', uses_mmcv_ops=True),
        ZooEntry('ASFF', lambda: m.ASFF([16, 16, 16], compress_channels=4),
                 _levels([16, 16, 16]), kind='neck', has_batchnorm=True),
        ZooEntry('RFBBlock', lambda: m.RFBBlock(16), _x(16), has_batchnorm=True),
        ZooEntry('RFB', lambda: m.RFB([16, 24]), _levels([16, 24]), kind='neck',
                 has_batchnorm=True),
        ZooEntry('ASPPBlock', lambda: m.ASPPBlock(16, channels=8, dilations=(1, 2)), _x(16),
                 has_batchnorm=True),
        ZooEntry('ASPP', lambda: m.ASPP([16, 24], channels=8, dilations=(1, 2)),
                 _levels([16, 24]), kind='neck', has_batchnorm=True),
        ZooEntry('MPMBlock', lambda: m.MPMBlock(16, pool_sizes=(4, 2)), _x(16),
                 has_batchnorm=True),
        ZooEntry('MPM', lambda: m.MPM([16, 24], pool_sizes=(4, 2)), _levels([16, 24]),
                 kind='neck', has_batchnorm=True),
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
