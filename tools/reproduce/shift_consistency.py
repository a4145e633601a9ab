"""Shift consistency of plain vs anti-aliased (BlurPool) ResNets, on shapes or on noise.

Zhang, "Making Convolutional Networks Shift-Invariant Again", ICML 2019
(https://arxiv.org/abs/1904.11486) measures *classification consistency*: how often a
network predicts the same class for two random crops of one image (ImageNet: 224x224
crops of the 256x256 image, shifts of 0-32 px per axis). Low-pass filtering before every
subsampling raises it: ResNet-18 trained from scratch, 85.11 % (baseline) to 87.51 % with
the filter [1, 2, 1] ("Tri-3", ``filt_size=3`` here), accuracy 69.74 % to 71.69 %.

Variants, from one set of weights (the blurs hold no parameters, so every variant loads
the plain network's state dict; with ``filt_size=1``, no low-pass, each one computes
exactly the plain network):

* ``plain``       as built;
* ``blur``        ``conv_cfg=dict(type='BlurConv2d')``: each strided conv at stride 1, then
                  BlurPool with its stride; in a ResNet the stem max pool becomes max pool
                  at stride 1, then BlurPool (the paper's MaxBlurPool);
* ``blur_first``  as ``blur`` with ``BlurConv2d(blur_first=True)``: blur, then strided conv;
* ``blurpool``    ResNets only, the paper's order ``Conv -> BN -> ReLU -> BlurPool2d``: each
                  strided conv at stride 1, ``mmplug.BlurPool2d`` after its ReLU (in the
                  stem before the max pool, which becomes MaxBlurPool; the downsample 1x1
                  convs have no ReLU and get it on their input).

``--data shapes`` (the reproduction). The embedded data's generator
(``mmplug.data.generate_coco_shapes``: 128x128 images of rectangles, ellipses, triangles
and stars on noisy gradient backgrounds) writes ``--train-images`` / ``--val-images``
images with one object each into a temporary folder; each object is cut out as a
``(size + max_shift)`` square canvas centred on its box (reflect padding at the border).
mmdet's ResNet-18 at reduced width (``--width 16``: 16-128 channels instead of 64-512)
with a global-pool linear head is trained from scratch per variant, from the same
weights on the same batches: Adam (learning rate 0.001, cosine decay to 0), random
``size`` crops of the canvas (shifts ``0..max_shift``), random flips and transposes
(which keep the class). On the validation objects: accuracy of the centre crop,
consistency over ``--pairs-per-object`` pairs of independent random crops (the paper's
metric) and, for the figure, the mean probability of the right class and the agreement
with the unshifted prediction under diagonal shifts ``(d, d)``, ``d = 0..max_shift``.

Deviations: 4 synthetic classes and 1.5k training objects instead of ImageNet; objects of
12-24 px (the demo set: 24-64) and one per image (a neighbour in the crop would make the
label depend on which object is at the centre); 64x64 crops of 80x80 canvases (shifts
0-16 px, half the period of the total stride 32) instead of 224 of 256 (0-32 px); width
16; Adam for minutes on a CPU instead of SGD for 90 epochs; ``blur`` blurs the conv
output before BN and ReLU (``blurpool`` follows the paper's order).

``--data noise`` (default; the architecture alone): random-init networks (BN in eval
mode) on 1/f noise, pairs of the crop at (0, 0) and at (dy, dx) != (0, 0), dy, dx <=
max_shift. ``consistency``: argmax agreement of a random linear head on the pooled,
standardised features; ``cosine``: mean cosine similarity of those features.

Examples::

    python tools/reproduce/shift_consistency.py --data shapes    # plain vs blur, ~6.5 min
    python tools/reproduce/shift_consistency.py --data shapes --epochs 45 \
        --variants plain blur blurpool                           # ~6 min
    python tools/reproduce/shift_consistency.py --data shapes --smoke --out-dir /tmp/sc
    python tools/reproduce/shift_consistency.py --model resnet18 --width 16 --max-shift 16 \
        --variants plain blur blur_first blurpool                # noise, seconds
"""
import argparse
import json
import math
import os
import os.path as osp
import tempfile
import time

import mmcv
import numpy as np
import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from torch import nn

from mmplug import BlurConv2d, BlurPool2d  # noqa: F401  registers BlurConv2d
from mmplug.analysis.report import write_outputs
from mmplug.analysis.timing import num_threads
from mmplug.data import generate_coco_shapes

VARIANTS = ('plain', 'blur', 'blur_first', 'blurpool')
#: ImageNet ResNet-18 from scratch, accuracy / consistency in %; Tri-3 is filt_size=3.
PAPER = {'plain': 'baseline: 69.74 / 85.11', **{
    variant: 'Tri-3: 71.69 / 87.51' for variant in ('blur', 'blur_first', 'blurpool')}}
NAME = 'shift_consistency'


def tiny_cnn(conv_cfg, widths=(16, 32, 64, 128)):
    """Four stages of two 3x3 ConvModules; every stage after the first starts at stride 2."""
    layers, cin = [], 3
    for i, w in enumerate(widths):
        layers += [ConvModule(cin, w, 3, stride=1 if i == 0 else 2, padding=1, conv_cfg=conv_cfg,
                              norm_cfg=dict(type='BN')),
                   ConvModule(w, w, 3, padding=1, conv_cfg=conv_cfg, norm_cfg=dict(type='BN'))]
        cin = w
    return nn.Sequential(*layers)


def _blur_input(blur):
    return lambda module, args: (blur(args[0]), ) + tuple(args[1:])  # a forward pre-hook


def antialias_after_relu(net, filt_size):
    """The paper's ``Conv -> BN -> ReLU -> BlurPool`` at every subsampling of an mmdet ResNet.

    The blurs enter as forward pre-hooks of the next conv (and as the stem's pooling) and
    hold no persistent state, so the state dict keeps the plain network's keys.
    """
    stem = net.conv1.stride[0]
    net.conv1.stride = (1, 1)
    width, pool = net.conv1.out_channels, net.maxpool
    net.maxpool = nn.Sequential(
        BlurPool2d(width, filt_size=filt_size, stride=stem),
        nn.MaxPool2d(pool.kernel_size, stride=1, padding=pool.padding),
        BlurPool2d(width, filt_size=filt_size, stride=pool.stride))
    for name in net.res_layers:
        for block in getattr(net, name):
            # BasicBlock: the stride is on conv1; Bottleneck (pytorch style): on conv2.
            convs = [block.conv1, block.conv2] + ([block.conv3] if hasattr(block, 'conv3') else [])
            for strided, following in zip(convs, convs[1:]):
                s = strided.stride[0]
                if s == 1:
                    continue
                strided.stride = (1, 1)
                following.aa_blur = BlurPool2d(strided.out_channels, filt_size, s)
                following.register_forward_pre_hook(_blur_input(following.aa_blur))
            if block.downsample is not None and block.downsample[0].stride[0] > 1:
                conv = block.downsample[0]
                conv.aa_blur = BlurPool2d(conv.in_channels, filt_size, conv.stride[0])
                conv.stride = (1, 1)
                conv.register_forward_pre_hook(_blur_input(conv.aa_blur))
    return net


def mmdet_resnet(depth, conv_cfg, width=64, filt_size=3, after_relu=False):
    """mmdet's ResNet (last stage out), anti-aliased by ``conv_cfg`` or ``after_relu``."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    # norm_eval=False: mmdet freezes BN statistics by default (for fine-tuning); here the
    # network is trained from scratch.
    net = MODELS.build(dict(type='ResNet', depth=depth, out_indices=(3, ), conv_cfg=conv_cfg,
                            base_channels=width, stem_channels=width, norm_eval=False))
    if after_relu:
        return antialias_after_relu(net, filt_size)
    if conv_cfg is not None:  # MaxBlurPool: dense max, then blur-subsample
        pool = net.maxpool
        net.maxpool = nn.Sequential(
            nn.MaxPool2d(pool.kernel_size, stride=1, padding=pool.padding),
            BlurPool2d(width, filt_size=filt_size, stride=pool.stride))
    return net


class PooledFeatures(nn.Module):
    """Backbone -> global average pool (-> linear head when ``num_classes``)."""

    def __init__(self, backbone, channels=None, num_classes=None):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(channels, num_classes) if num_classes else None

    def forward(self, x):
        out = self.backbone(x)
        out = out[-1] if isinstance(out, (tuple, list)) else out
        out = out.mean(dim=(2, 3))  # [N, C]
        return self.head(out) if self.head is not None else out


def build(model, variant, filt_size, width=64, num_classes=None):
    conv_cfg = None if variant in ('plain', 'blurpool') else dict(
        type='BlurConv2d', filt_size=filt_size, blur_first=variant == 'blur_first')
    if model == 'tiny':
        return PooledFeatures(tiny_cnn(conv_cfg), 128, num_classes)
    backbone = mmdet_resnet(int(model[len('resnet'):]), conv_cfg, width, filt_size,
                            after_relu=variant == 'blurpool')
    return PooledFeatures(backbone, backbone.feat_dim, num_classes)


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
def measure_noise(args):
    gen = torch.Generator().manual_seed(args.seed)
    canvas = natural_noise(args.pairs, args.size + args.max_shift, gen)
    shifts = torch.randint(0, args.max_shift + 1, (args.pairs, 2), generator=gen)
    shifts[(shifts == 0).all(dim=1), 1] = 1  # a pair is never the same crop
    crop_a = canvas[:, :, :args.size, :args.size]
    crop_b = torch.stack([canvas[i, :, dy:dy + args.size, dx:dx + args.size]
                          for i, (dy, dx) in enumerate(shifts.tolist())])

    torch.manual_seed(args.seed)
    reference = build(args.model, 'plain', args.filt_size, args.width)
    inits = [reference.backbone] if hasattr(reference.backbone, 'init_weights') else [
        m for m in reference.modules() if isinstance(m, ConvModule)]
    for m in inits:
        m.init_weights()
    state = reference.state_dict()
    dim = None
    results = {}
    for variant in args.variants:
        net = reference if variant == 'plain' else build(args.model, variant, args.filt_size,
                                                         args.width)
        net.load_state_dict(state)  # same weights for every variant
        net.to(args.device).eval()
        feats_a, feats_b = [], []
        for start in range(0, args.pairs, args.batch):
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


def load_objects(root, split, canvas):
    """One ``canvas x canvas`` uint8 cut-out per annotated object, centred on its box.

    Returns:
        tuple: crops ``[N, 3, canvas, canvas]`` (uint8, RGB), labels ``[N]``, class names.
    """
    with open(osp.join(root, 'annotations', f'instances_{split}.json'), encoding='utf-8') as f:
        coco = json.load(f)
    cat_ids = sorted(c['id'] for c in coco['categories'])
    names = [c['name'] for c in sorted(coco['categories'], key=lambda c: c['id'])]
    by_image = {}
    for ann in coco['annotations']:
        by_image.setdefault(ann['image_id'], []).append(ann)
    half = canvas // 2
    crops, labels = [], []
    for img in coco['images']:
        if img['id'] not in by_image:
            continue
        arr = mmcv.imread(osp.join(root, split, img['file_name']), channel_order='rgb')
        arr = np.pad(arr, ((half, half), (half, half), (0, 0)), mode='reflect')
        for ann in by_image[img['id']]:
            x, y, w, h = ann['bbox']
            cx, cy = int(round(x + w / 2)), int(round(y + h / 2))  # + half - half
            crops.append(arr[cy:cy + canvas, cx:cx + canvas])
            labels.append(cat_ids.index(ann['category_id']))
    if not crops:
        raise ValueError(f'no annotated objects in {root} ({split})')
    crops = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
    return crops, torch.tensor(labels), names


def crops_at(canvases, offsets, size, augment=None):
    """Float crops ``[N, 3, size, size]`` at per-sample ``offsets`` ``[N, 2]`` (dy, dx)."""
    out = []
    for i, (dy, dx) in enumerate(offsets.tolist()):
        crop = canvases[i, :, dy:dy + size, dx:dx + size]
        if augment is not None:  # flips and transposes keep a shape's class
            crop = crop.flip(-1) if augment[i, 0] else crop
            crop = crop.flip(-2) if augment[i, 1] else crop
            crop = crop.transpose(-1, -2) if augment[i, 2] else crop
        out.append(crop)
    return (torch.stack(out).float() / 255 - 0.5) / 0.25


def train_classifier(net, crops, labels, args):
    gen = torch.Generator().manual_seed(args.seed)  # the same batches for every variant
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    total = args.epochs * math.ceil(len(crops) / args.batch)
    net.train()
    start, step = time.perf_counter(), 0
    for _ in range(args.epochs):
        perm = torch.randperm(len(crops), generator=gen)
        for first in range(0, len(crops), args.batch):
            idx = perm[first:first + args.batch]
            offsets = torch.randint(0, args.max_shift + 1, (len(idx), 2), generator=gen)
            augment = torch.randint(0, 2, (len(idx), 3), generator=gen).bool()
            for group in opt.param_groups:
                group['lr'] = args.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(net(crops_at(crops[idx], offsets, args.size, augment)),
                                   labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return time.perf_counter() - start


@torch.no_grad()
def evaluate(net, crops, labels, args):
    """Centre-crop accuracy, consistency of random crop pairs, diagonal-shift curves."""
    net.eval()
    n, shift = len(crops), args.max_shift

    def probs(offsets):
        return torch.cat([net(crops_at(crops[s:s + args.batch], offsets[s:s + args.batch],
                                       args.size)).softmax(1)
                          for s in range(0, n, args.batch)])

    gen = torch.Generator().manual_seed(args.seed + 1)  # the same pairs for every variant
    agree, correct = [], []
    for _ in range(args.pairs_per_object):
        pred_a = probs(torch.randint(0, shift + 1, (n, 2), generator=gen)).argmax(1)
        pred_b = probs(torch.randint(0, shift + 1, (n, 2), generator=gen)).argmax(1)
        agree.append(pred_a == pred_b)
        correct += [pred_a == labels, pred_b == labels]
    p_right, same, base = [], [], None
    for d in range(shift + 1):
        p = probs(torch.full((n, 2), d))
        base = p.argmax(1) if base is None else base
        p_right.append(p[torch.arange(n), labels].mean().item())
        same.append((p.argmax(1) == base).float().mean().item())
        if d == shift // 2:
            centre = p.argmax(1)  # the centre crop
    return dict(accuracy=(centre == labels).float().mean().item(),
                consistency=torch.cat(agree).float().mean().item(),
                random_crop_accuracy=torch.cat(correct).float().mean().item(),
                diagonal_p_correct=p_right, diagonal_agreement=same)


def measure_shapes(args):
    with tempfile.TemporaryDirectory() as tmp:
        root = osp.join(tmp, 'coco_shapes')
        # One object per image: else the label would depend on which object is central.
        generate_coco_shapes(root, num_train=args.train_images, num_val=args.val_images,
                             seed=args.seed, max_objects=1, min_size=args.object_size[0],
                             max_size=args.object_size[1], with_masks=False)
        canvas = args.size + args.max_shift
        train_x, train_y, names = load_objects(root, 'train', canvas)
        val_x, val_y, _ = load_objects(root, 'val', canvas)
    torch.manual_seed(args.seed)
    reference = build(args.model, 'plain', args.filt_size, args.width, len(names))
    state = reference.state_dict()  # every variant starts from these weights
    results = {}
    for variant in args.variants:
        net = build(args.model, variant, args.filt_size, args.width, len(names))
        net.load_state_dict(state)
        train_time = train_classifier(net, train_x, train_y, args)
        res = evaluate(net, val_x, val_y, args)
        res.update(train_time=train_time, params=sum(p.numel() for p in net.parameters()))
        results[variant] = res
        print(f'  {variant:<10} accuracy {res["accuracy"]:.4f} consistency '
              f'{res["consistency"]:.4f} ({train_time:.0f} s training)', flush=True)
    meta = dict(classes=names, num_train=len(train_x), num_val=len(val_x))
    return results, meta


def to_markdown(results, meta, args, wall_time):
    lines = ['| network | params | train time (s) | val accuracy (centre crop) | consistency '
             '| accuracy (random crops) | paper, ImageNet ResNet-18: acc / consistency |',
             '| --- | ---: | ---: | ---: | ---: | ---: | --- |']
    for variant, r in results.items():
        lines.append(f'| {args.model} {variant} | {r["params"]:,} | {r["train_time"]:.0f} | '
                     f'{100 * r["accuracy"]:.2f} % | {100 * r["consistency"]:.2f} % | '
                     f'{100 * r["random_crop_accuracy"]:.2f} % | {PAPER[variant]} |')
    lines += ['', f'{meta["num_train"]} train / {meta["num_val"]} val objects '
              f'({", ".join(meta["classes"])}); {args.size}x{args.size} crops of '
              f'{args.size + args.max_shift}x{args.size + args.max_shift} canvases (shifts '
              f'0-{args.max_shift} px); width {args.width}, {args.epochs} epochs, batch '
              f'{args.batch}, filt_size {args.filt_size}, {args.pairs_per_object} pairs per val '
              f'object, seed {args.seed}, {torch.get_num_threads()} threads; total wall time '
              f'{wall_time:.0f} s.' + (' Smoke run.' if args.smoke else '')]
    return '\n'.join(lines) + '\n'


def plot(results, args, path):
    import matplotlib
    matplotlib.use('Agg')  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    shifts = list(range(args.max_shift + 1))
    for variant, r in results.items():
        label = f'{variant} (consistency {100 * r["consistency"]:.1f} %)'
        axes[0].plot(shifts, r['diagonal_p_correct'], marker='o', ms=3, label=label)
        axes[1].plot(shifts, [100 * a for a in r['diagonal_agreement']], marker='o', ms=3,
                     label=label)
    axes[0].set_ylabel('mean probability of the right class')
    axes[1].set_ylabel('same class as at shift 0 (%)')
    for ax in axes:
        ax.set_xlabel('diagonal shift (d, d) of the crop, px')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f'{args.model} (width {args.width}) on the shapes set, validation objects')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Shift consistency: plain vs BlurConv2d')
    parser.add_argument('--data', default='noise', choices=['noise', 'shapes'],
                        help='noise: random-init networks on noise (default); shapes: train '
                             'classifiers on the embedded shapes set')
    # Defaults given as a/b: a for noise, b for shapes.
    parser.add_argument('--model', choices=['tiny', 'resnet18', 'resnet50'],
                        help='network (default: tiny/resnet18)')
    parser.add_argument('--variants', nargs='+', choices=VARIANTS,
                        help='variants (default: plain blur blur_first/plain blur)')
    parser.add_argument('--width', type=int, help='ResNet base channels (default: 64/16)')
    parser.add_argument('--pairs', type=int, default=512, help='noise: image pairs (default: 512)')
    parser.add_argument('--size', type=int, default=64, help='crop size (default: 64)')
    parser.add_argument('--max-shift', type=int, help='largest shift per axis (default: 8/16)')
    parser.add_argument('--filt-size', type=int, default=3, help='blur filter (default: 3)')
    parser.add_argument('--num-classes', type=int, default=10,
                        help='noise: classes of the random head (default: 10)')
    parser.add_argument('--batch', type=int, default=64, help='batch size (default: 64)')
    parser.add_argument('--epochs', type=int, default=80, help='shapes: epochs (default: 80)')
    parser.add_argument('--lr', type=float, default=1e-3, help='shapes: Adam lr (0.001)')
    parser.add_argument('--pairs-per-object', type=int, default=5,
                        help='shapes: random crop pairs per val object (default: 5)')
    parser.add_argument('--train-images', type=int, default=1536, help='shapes (1536)')
    parser.add_argument('--val-images', type=int, default=384, help='shapes (384)')
    parser.add_argument('--object-size', type=float, nargs=2, default=[12, 24],
                        metavar=('MIN', 'MAX'),
                        help='shapes: object extent range in pixels (default: 12 24)')
    parser.add_argument('--seed', type=int, default=0, help='seed (default: 0)')
    parser.add_argument('--threads', type=int, help='torch threads (default: torch default)')
    parser.add_argument('--device', default='cpu', help='noise: device (default: cpu)')
    parser.add_argument('--out', help='also write the results as JSON here')
    parser.add_argument('--out-dir', default='work_dirs/reproductions',
                        help='shapes: folder of the table, JSON and figure')
    parser.add_argument('--smoke', action='store_true',
                        help='shapes: tiny run for the tests (64 images, width 8, 3 epochs)')
    args = parser.parse_args(argv)
    shapes = args.data == 'shapes'
    args.model = args.model or ('resnet18' if shapes else 'tiny')
    args.variants = [v for v in VARIANTS if v in (args.variants or (
        ('plain', 'blur') if shapes else VARIANTS[:3]))]
    args.max_shift = args.max_shift if args.max_shift is not None else (16 if shapes else 8)
    if args.smoke:
        args.width, args.epochs, args.pairs_per_object, args.batch = args.width or 8, 3, 2, 16
        args.train_images, args.val_images = 48, 16
        args.size, args.max_shift = 32, min(args.max_shift, 8)
        args.threads = args.threads or 1  # tiny ops on a shared machine are slower with more
    args.width = args.width or (16 if shapes else 64)
    for name in ('pairs', 'size', 'num_classes', 'batch', 'epochs', 'width', 'pairs_per_object',
                 'train_images', 'val_images', 'max_shift', 'threads'):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1, got {value}')
    if args.model == 'tiny' and 'blurpool' in args.variants:
        parser.error("--variants blurpool needs a ResNet --model (it rewires ResNet blocks), "
                     "got --model tiny")
    if not 2 <= args.object_size[0] <= args.object_size[1] <= 128:
        parser.error(f'--object-size must satisfy 2 <= MIN <= MAX <= 128, got '
                     f'{args.object_size[0]:g} {args.object_size[1]:g}')
    if not args.lr > 0:
        parser.error(f'--lr must be > 0, got {args.lr}')
    return args


def main(argv=None):
    """Measure; returns ``{variant: {metric: value}}``."""
    args = parse_args(argv)
    with num_threads(args.threads):
        start = time.perf_counter()
        if args.data == 'noise':
            results = measure_noise(args)
        else:
            results, meta = measure_shapes(args)
        wall_time = time.perf_counter() - start
        if args.data == 'noise':
            print(f'model={args.model} pairs={args.pairs} size={args.size} '
                  f'max_shift={args.max_shift} filt_size={args.filt_size} seed={args.seed}')
            print(f'{"variant":<12}{"consistency":>12}{"cosine":>10}')
            for variant, res in results.items():
                print(f'{variant:<12}{res["consistency"]:>12.4f}{res["cosine"]:>10.4f}')
            if args.out:
                write_outputs('', dict(args=vars(args), results=results, wall_time=wall_time),
                              json_path=args.out)
        else:
            os.makedirs(args.out_dir, exist_ok=True)
            args.out = args.out or osp.join(args.out_dir, f'{NAME}.json')
            write_outputs(to_markdown(results, meta, args, wall_time),
                          dict(args=vars(args), results=results, wall_time=wall_time, meta=meta),
                          osp.join(args.out_dir, f'{NAME}.md'), args.out)
            plot(results, args, osp.join(args.out_dir, f'{NAME}.png'))
    return results


if __name__ == '__main__':
    main()
