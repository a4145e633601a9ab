"""Shift consistency of a CNN with plain vs anti-aliased (BlurConv2d) strided convs.

Zhang, "Making Convolutional Networks Shift-Invariant Again" (ICML 2019,
https://arxiv.org/abs/1904.11486) measures *consistency*: how often a network
predicts the same class for two crops of one image shifted against each other.
This tool measures it on one network built three ways with the *same weights*
(``BlurConv2d`` has ``nn.Conv2d``'s parameters, so the state dict is shared):

* ``plain``       every strided conv as is;
* ``blur``        ``conv_cfg=dict(type='BlurConv2d')``: conv at stride 1, then
                  BlurPool with the stride (the paper's order);
* ``blur_first``  ``BlurConv2d(blur_first=True)``: blur, then the strided conv.

Images are random 1/f ("natural-like") noise on a canvas; each pair is the
crop at (0, 0) and the crop shifted by (dy, dx), 0 <= dy, dx <= max-shift, not
both 0. Reported per variant:

* ``consistency``: fraction of pairs whose argmax of a random linear head on
  the globally pooled features agrees (the paper's metric, for a random head);
* ``cosine``: mean cosine similarity of the pooled features of a pair.

Features are standardised per dimension over the first crops before both, so
the common component every random-init feature shares does not make them
trivially equal. The networks are randomly initialised (BN in eval mode), so
the numbers compare architectures, not the trained models of the paper.
The stem max pool of ``resnet*`` is not a conv and stays aliased.

    python tools/analysis/shift_consistency.py                          # tiny CNN
    python tools/analysis/shift_consistency.py --model resnet18 --size 96 --pairs 256
    python tools/analysis/shift_consistency.py --pairs 4 --size 32 --batch 4  # smoke run
"""
import argparse
import json

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from torch import nn

from mmplug.conv.blur_pool import BlurConv2d  # noqa: F401  registers BlurConv2d

try:
    from tqdm import tqdm
except ImportError:  # optional
    def tqdm(iterable, **kwargs):
        return iterable

VARIANTS = ('plain', 'blur', 'blur_first')


def tiny_cnn(conv_cfg, widths=(16, 32, 64, 128)):
    """Four stages of two 3x3 ConvModules; every stage after the first starts at stride 2."""
    layers, cin = [], 3
    for i, w in enumerate(widths):
        layers += [ConvModule(cin, w, 3, stride=1 if i == 0 else 2, padding=1, conv_cfg=conv_cfg,
                              norm_cfg=dict(type='BN')),
                   ConvModule(w, w, 3, padding=1, conv_cfg=conv_cfg, norm_cfg=dict(type='BN'))]
        cin = w
    return nn.Sequential(*layers)


def mmdet_resnet(depth, conv_cfg):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    return MODELS.build(dict(type='ResNet', depth=depth, out_indices=(3, ), conv_cfg=conv_cfg))


class PooledFeatures(nn.Module):
    """Backbone -> global average pool: ``[N, C]``."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x):
        out = self.backbone(x)
        out = out[-1] if isinstance(out, (tuple, list)) else out
        return out.mean(dim=(2, 3))


def build(model, variant, filt_size):
    conv_cfg = None if variant == 'plain' else dict(
        type='BlurConv2d', filt_size=filt_size, blur_first=variant == 'blur_first')
    if model == 'tiny':
        backbone = tiny_cnn(conv_cfg)
    else:
        backbone = mmdet_resnet(int(model[len('resnet'):]), conv_cfg)
    return PooledFeatures(backbone)


def natural_noise(n, size, generator):
    """Random images with a roughly 1/f amplitude spectrum: ``[n, 3, size, size]``."""
    img = torch.zeros(n, 3, size, size)
    octave = 1
    while size // octave >= 2:
        low = torch.randn(n, 3, max(size // octave, 2), max(size // octave, 2),
                          generator=generator)
        img += octave * F.interpolate(low, size=(size, size), mode='bilinear',
                                      align_corners=False)
        octave *= 2
    img = img - img.mean(dim=(1, 2, 3), keepdim=True)
    return img / img.std(dim=(1, 2, 3), keepdim=True)


@torch.no_grad()
def measure(args):
    gen = torch.Generator().manual_seed(args.seed)
    canvas = natural_noise(args.pairs, args.size + args.max_shift, gen)
    shifts = torch.randint(0, args.max_shift + 1, (args.pairs, 2), generator=gen)
    shifts[(shifts == 0).all(dim=1), 1] = 1  # a pair is never the same crop
    crop_a = canvas[:, :, :args.size, :args.size]
    crop_b = torch.stack([canvas[i, :, dy:dy + args.size, dx:dx + args.size]
                          for i, (dy, dx) in enumerate(shifts.tolist())])

    torch.manual_seed(args.seed)
    reference = build(args.model, 'plain', args.filt_size)
    init = getattr(reference.backbone, 'init_weights', None)
    if init is not None:
        init()
    else:
        for m in reference.modules():
            if isinstance(m, ConvModule):
                m.init_weights()
    state = reference.state_dict()
    dim = None
    results = {}
    for variant in VARIANTS:
        net = reference if variant == 'plain' else build(args.model, variant, args.filt_size)
        net.load_state_dict(state)  # same weights for every variant
        net.to(args.device).eval()
        feats_a, feats_b = [], []
        for start in tqdm(range(0, args.pairs, args.batch), desc=variant, leave=False):
            sl = slice(start, start + args.batch)
            feats_a.append(net(crop_a[sl].to(args.device)).float().cpu())
            feats_b.append(net(crop_b[sl].to(args.device)).float().cpu())
        fa, fb = torch.cat(feats_a), torch.cat(feats_b)
        mean = fa.mean(0)
        std = fa.std(0).clamp_min(1e-6) if len(fa) > 1 else torch.ones_like(mean)
        fa, fb = (fa - mean) / std, (fb - mean) / std
        if dim is None:
            dim = fa.shape[1]
            head = torch.randn(dim, args.num_classes, generator=gen)
        agree = ((fa @ head).argmax(1) == (fb @ head).argmax(1)).float().mean().item()
        cosine = F.cosine_similarity(fa, fb, dim=1).mean().item()
        results[variant] = dict(consistency=agree, cosine=cosine)
    return results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Shift consistency: plain vs BlurConv2d')
    parser.add_argument('--model', default='tiny', choices=['tiny', 'resnet18', 'resnet50'],
                        help='network (random init); default: tiny')
    parser.add_argument('--pairs', type=int, default=512, help='image pairs (default: 512)')
    parser.add_argument('--size', type=int, default=64, help='crop size (default: 64)')
    parser.add_argument('--max-shift', type=int, default=8,
                        help='largest shift per axis in pixels (default: 8)')
    parser.add_argument('--filt-size', type=int, default=3, help='blur filter (default: 3)')
    parser.add_argument('--num-classes', type=int, default=10,
                        help='classes of the random head (default: 10)')
    parser.add_argument('--batch', type=int, default=64, help='batch size (default: 64)')
    parser.add_argument('--seed', type=int, default=0, help='seed (default: 0)')
    parser.add_argument('--device', default='cpu', help='device (default: cpu)')
    parser.add_argument('--out', help='also write the results as JSON here')
    args = parser.parse_args(argv)
    for name in ('pairs', 'size', 'max_shift', 'num_classes', 'batch'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    return args


def main(argv=None):
    args = parse_args(argv)
    results = measure(args)
    print(f'model={args.model} pairs={args.pairs} size={args.size} '
          f'max_shift={args.max_shift} filt_size={args.filt_size} seed={args.seed}')
    print(f'{"variant":<12}{"consistency":>12}{"cosine":>10}')
    for variant, res in results.items():
        print(f'{variant:<12}{res["consistency"]:>12.4f}{res["cosine"]:>10.4f}')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(args=vars(args), results=results), f, indent=2)
    return results


if __name__ == '__main__':
    main()
