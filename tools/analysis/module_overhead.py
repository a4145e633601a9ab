"""Parameter and FLOP overhead of every mmplug module on ResNet-50.

Builds mmdet's ``ResNet`` (depth 50, backbone only, all four stage outputs)
plain and with each module at the placement its paper (or docstring ``Note:``)
suggests, and prints params and multiply-accumulates (GMACs, the unit mmdet's
and the papers' "GFLOPs" are counted in) for one image, with the ratio to the
plain ResNet-50.

MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (aten-level conv,
matmul and attention; elementwise ops, pooling, BN, ``grid_sample`` are not
counted, as in fvcore/mmengine counters). mmcv's deformable conv runs outside
aten, so a ``DCNv2UnitMask`` is counted as its dense conv (the MACs of the
sampled im2col product; bilinear sampling is not counted).

    python tools/analysis/module_overhead.py                 # 224x224, all variants
    python tools/analysis/module_overhead.py --size 800 1216 --only SE NonLocal
"""
import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

import mmplug  # noqa: F401  registers every module
from mmplug.conv.modulated_deform_conv import \
    modulated_deform_conv2d as torch_modulated_deform_conv2d

try:
    from mmcv.ops import DeformConv2d, ModulatedDeformConv2d
except ImportError:  # mmcv without ops: no deformable conv can be built
    DEFORM_CONVS = ()
else:
    #: mmcv's deformable convs (and subclasses: the packs, DCNv2UnitMask) run
    #: outside aten, so FlopCounterMode sees only their offset conv.
    DEFORM_CONVS = (DeformConv2d, ModulatedDeformConv2d)


def _plugin(cfg, stages, position):
    return dict(plugins=[dict(cfg=cfg, stages=stages, position=position)])


ALL = (True, True, True, True)
C4 = (False, False, True, False)
C5 = (False, False, False, True)
C3_C5 = (False, True, True, True)

#: name -> (ResNet kwargs, placement in words)
VARIANTS = {
    'ResNet-50': ({}, '-'),
    'SE': (_plugin(dict(type='SE'), ALL, 'after_conv3'), 'after_conv3, c2-c5'),
    'CBAM': (_plugin(dict(type='CBAM'), ALL, 'after_conv3'), 'after_conv3, c2-c5'),
    'SGE': (_plugin(dict(type='SGE'), ALL, 'after_conv3'), 'after_conv3, c2-c5'),
    'SK': (_plugin(dict(type='SK'), ALL, 'after_conv2'), 'after_conv2, c2-c5'),
    'NonLocal': (_plugin(dict(type='NonLocal'), C4, 'after_conv3'), 'after_conv3, c4'),
    'STN': (_plugin(dict(type='STN'), C5, 'after_conv2'), 'after_conv2, c5'),
    'StripPooling': (_plugin(dict(type='StripPooling'), C5, 'after_conv2'), 'after_conv2, c5'),
    'CoordConvPlugin': (_plugin(dict(type='CoordConvPlugin'), ALL, 'after_conv2'),
                        'after_conv2, c2-c5'),
    'CoordConv2d': (dict(conv_cfg=dict(type='CoordConv2d')), 'conv_cfg, every conv'),
    'GhostConv2d': (dict(conv_cfg=dict(type='GhostConv2d')), 'conv_cfg, every conv'),
    'BlurConv2d': (dict(conv_cfg=dict(type='BlurConv2d')), 'conv_cfg, strided convs'),
    'BlurConv2d(blur_first)': (dict(conv_cfg=dict(type='BlurConv2d', blur_first=True)),
                               'conv_cfg, strided convs'),
    'DCNv2UnitMask': (dict(dcn=dict(type='DCNv2UnitMask', deform_groups=1,
                                    fallback_on_stride=False),
                           stage_with_dcn=C3_C5), 'dcn, conv2 of c3-c5'),
}


def build_resnet50(**kwargs):
    from mmdet.models.backbones import ResNet
    model = ResNet(depth=50, out_indices=(0, 1, 2, 3), **kwargs)
    model.eval()  # mmdet's ResNet.train() returns None, so no chaining
    return model


def count_macs(model, forward):
    """Return (MACs, deformable-conv MACs) of ``forward()``, a call that runs ``model``.

    MACs are FlopCounterMode's FLOPs / 2 plus, for every deformable conv of
    ``model`` (``DEFORM_CONVS``) that runs an mmcv op, which FlopCounterMode
    misses, the MACs of the dense conv it computes: ``N * H_out * W_out * C_out * C_in / groups * kh * kw``.
    The second value is that added part alone.
    """
    dcn_macs = []

    def dcn_hook(module, inputs, output):
        select = getattr(module, '_deform_conv', None)  # DCNv2UnitMask: torch path on CPU
        if select is not None and select(inputs[0]) is torch_modulated_deform_conv2d:
            return  # its dense conv is an aten conv that FlopCounterMode already counts
        kh, kw = module.kernel_size
        dcn_macs.append(output.numel() * module.in_channels // module.groups * kh * kw)

    hooks = [m.register_forward_hook(dcn_hook) for m in model.modules()
             if isinstance(m, DEFORM_CONVS)]
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            forward()
    finally:
        for h in hooks:
            h.remove()
    return counter.get_total_flops() // 2 + sum(dcn_macs), sum(dcn_macs)


def count(model, size):
    """Return (params, MACs) of one forward pass at ``size`` (H, W)."""
    params = sum(p.numel() for p in model.parameters())
    macs, _ = count_macs(model, lambda: model(torch.randn(1, 3, *size)))
    return params, macs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--size', type=int, nargs=2, default=(224, 224), metavar=('H', 'W'))
    parser.add_argument('--only', nargs='+', choices=list(VARIANTS)[1:],
                        help='variants to measure (the plain ResNet-50 always is)')
    args = parser.parse_args()
    names = ['ResNet-50'] + (args.only or list(VARIANTS)[1:])

    torch.manual_seed(0)
    rows = []
    for name in names:
        kwargs, where = VARIANTS[name]
        params, macs = count(build_resnet50(**kwargs), args.size)
        rows.append((name, where, params, macs))
    base_params, base_macs = rows[0][2], rows[0][3]

    print(f'ResNet-50 backbone (mmdet ResNet, out_indices 0-3), input 1x3x{args.size[0]}x{args.size[1]}')
    print('| module | placement | params (M) | d params | GMACs | d GMACs |')
    print('| --- | --- | ---: | ---: | ---: | ---: |')
    for name, where, params, macs in rows:
        dp = (params - base_params) / base_params * 100
        dm = (macs - base_macs) / base_macs * 100
        print(f'| {name} | {where} | {params / 1e6:.2f} | {dp:+.1f}% | {macs / 1e9:.3f} | {dm:+.1f}% |')


if __name__ == '__main__':
    main()
