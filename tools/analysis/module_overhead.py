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

With ``--speed`` it also measures forward images/s of every variant (eval mode,
``torch.no_grad()``, ``--speed-batch`` images of ``--size``, default 8 of
224x224) and adds the columns ``img/s``, ``speed vs baseline`` (median over
rounds of the plain ResNet-50's time over the variant's) and, for plugins,
``time in module`` (the share of the plugged model's forward spent inside the
inserted modules, from forward hooks: ``time_in_modules``). All variants are
built first and timed **interleaved** with the plain ResNet-50: every round
runs each once, in its own (seeded) shuffled order, and the medians of
``--repeats`` rounds after ``--warmup`` are reported
(``_timing.forward_speed``, the clock of ``benchmark_plugins.py``), so the
noise of a busy machine falls on all of them alike. On CUDA (``--device cuda``,
the default when available) the times come from CUDA events and a ``peak MiB``
column gives each forward's peak memory above the weights; that path has not
been run here (CPU only). Without ``--speed`` the output is what it always was.

    python tools/analysis/module_overhead.py                 # 224x224, all variants
    python tools/analysis/module_overhead.py --size 800 1216 --only SE NonLocal
    python tools/analysis/module_overhead.py --speed --threads 2 --out overhead.md --json overhead.json
"""
import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import mmplug  # noqa: F401  registers every module
from mmplug.conv.modulated_deform_conv import \
    modulated_deform_conv2d as torch_modulated_deform_conv2d
from mmplug.registry import MODELS

# a sibling module (on sys.path when this script runs)
from _timing import (MIB, add_speed_args, fmt, fmt_speed, forward_speed, num_threads,
                     progress_bar, speed_meta, speed_note, write_outputs)

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


BASELINE = 'ResNet-50'


def plugin_modules(model, kwargs):
    """The modules a plugin variant inserted into ``model`` (empty for conv replacements)."""
    classes = tuple(MODELS.get(p['cfg']['type']) for p in kwargs.get('plugins', ()))
    return [m for m in model.modules() if classes and isinstance(m, classes)]


def time_in_modules(modules, forward, device, warmup=1, repeats=5):
    """Fraction of ``forward()``'s time spent inside ``modules``, under ``no_grad``.

    Forward pre/post hooks read the clock around every call of the modules
    (after a synchronize on CUDA) while ``forward()`` runs ``warmup + repeats``
    times; the fraction is the modules' total over the forwards' total, over
    the ``repeats`` counted runs. Unlike the ratio of two models' times it does
    not depend on how alike two separately built models run, so it resolves
    overheads of a few percent that the round-to-round noise of the ratio hides
    (here +-2-3 % between runs). The hooks are removed afterwards; the timed
    img/s columns are measured without them.
    """
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == 'cuda' else (lambda: None)
    inside, starts = [0.0], {}

    def pre(module, args):
        sync()
        starts[id(module)] = time.perf_counter()

    def post(module, args, output):
        sync()
        inside[0] += time.perf_counter() - starts.pop(id(module))

    hooks = [h for m in modules
             for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    total = 0.0
    try:
        with torch.no_grad():
            for r in range(warmup + repeats):
                if r == warmup:
                    inside[0] = 0.0
                sync()
                start = time.perf_counter()
                forward()
                sync()
                if r >= warmup:
                    total += time.perf_counter() - start
    finally:
        for h in hooks:
            h.remove()
    return inside[0] / total


def run(names, size, speed=None, progress=True):
    """Params and MACs of the variants ``names`` (the first is the baseline) at ``size``.

    Args:
        names (list[str]): Keys of ``VARIANTS``; ``names[0]`` is what the
            differences and speed ratios are taken against.
        size (tuple): (H, W) of the input.
        speed (dict, optional): ``_timing.speed_meta``: also time every variant's
            forward (``device``, ``batch``, ``warmup``, ``repeats``).
        progress (bool): A progress bar over the timing rounds (stderr).

    Returns:
        list[dict]: one per variant: ``module``, ``placement``, ``params``, ``macs``
        and, with ``speed``, ``_timing.forward_speed``'s ``img_s``,
        ``speed_vs_baseline``, ``fwd_ms``, ``fwd_samples_ms``, ``peak_bytes``.
    """
    torch.manual_seed(0)
    rows, models = [], {}
    for name in names:
        kwargs, where = VARIANTS[name]
        model = build_resnet50(**kwargs)
        params, macs = count(model, size)
        rows.append(dict(module=name, placement=where, params=params, macs=macs))
        if speed is not None:
            models[name] = model
    if speed is not None:
        device = torch.device(speed['device'])
        x = torch.randn(speed['batch'], 3, *size, device=device)
        forwards = {name: (lambda m=model.to(device): m(x)) for name, model in models.items()}
        rounds = speed['warmup'] + speed['repeats']
        bar = progress_bar(rounds, 'timing', 'round') if progress else None
        try:
            speeds = forward_speed(forwards, speed['batch'], device, speed['warmup'],
                                   speed['repeats'], baseline=names[0],
                                   on_round=None if bar is None else bar.update, shuffle=True)
        finally:
            if bar is not None:
                bar.close()
        for row in rows:
            row.update(speeds[row['module']])
            inserted = plugin_modules(models[row['module']], VARIANTS[row['module']][0])
            row['time_in_module'] = None if not inserted else time_in_modules(
                inserted, forwards[row['module']], device, speed['warmup'], speed['repeats'])
    return rows


def to_markdown(rows, size, speed=None):
    """The table (the tool's stdout): one row per variant, differences to ``rows[0]``."""
    base_params, base_macs = rows[0]['params'], rows[0]['macs']
    cuda = speed is not None and speed['device'].startswith('cuda')
    extra = (['img/s', 'speed vs baseline', 'time in module'] + (['peak MiB'] if cuda else [])
             if speed else [])
    lines = [f'ResNet-50 backbone (mmdet ResNet, out_indices 0-3), input 1x3x{size[0]}x{size[1]}',
             '| module | placement | params (M) | d params | GMACs | d GMACs |'
             + ''.join(f' {c} |' for c in extra),
             '| --- | --- | ---: | ---: | ---: | ---: |' + ' ---: |' * len(extra)]
    for row in rows:
        dp = (row['params'] - base_params) / base_params * 100
        dm = (row['macs'] - base_macs) / base_macs * 100
        share = row.get('time_in_module')
        cells = ([fmt(row['img_s']), fmt_speed(row),
                  '-' if share is None else f'{share * 100:.1f}%'] if speed else [])
        if cuda:
            cells.append(fmt(row['peak_bytes'] / MIB))
        lines.append(f'| {row["module"]} | {row["placement"]} | {row["params"] / 1e6:.2f} '
                     f'| {dp:+.1f}% | {row["macs"] / 1e9:.3f} | {dm:+.1f}% |'
                     + ''.join(f' {c} |' for c in cells))
    if speed:
        lines += ['', f'{speed_note(speed)} Input: {speed["batch"]}x3x{size[0]}x{size[1]}. '
                  'time in module: share of the plugged model\'s forward time spent inside '
                  'the inserted plugin modules (forward hooks, same batch and rounds, '
                  'measured after the img/s without hooks; "-" for conv replacements, which '
                  'take the place of convs); the overhead they imply over the rest of the '
                  'model is share / (1 - share).']
    return '\n'.join(lines) + '\n'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--size', type=int, nargs=2, default=(224, 224), metavar=('H', 'W'))
    parser.add_argument('--only', nargs='+', choices=list(VARIANTS)[1:],
                        help='variants to measure (the plain ResNet-50 always is)')
    parser.add_argument('--out', help='also write the markdown table to this file')
    parser.add_argument('--json', help='also write every number to this JSON file')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    add_speed_args(parser, batch=8, warmup=2, repeats=10)
    return parser.parse_args(argv)


def main(argv=None):
    """Print the table (arguments as on the command line); returns the results dict."""
    args = parse_args(argv)
    names = [BASELINE] + (args.only or list(VARIANTS)[1:])
    with num_threads(args.threads) as threads:
        speed = speed_meta(args, threads) if args.speed else None
        rows = run(names, tuple(args.size), speed, progress=not args.no_progress)
    results = dict(size=list(args.size), rows=rows)
    if speed:
        results['speed'] = speed
    write_outputs(to_markdown(rows, args.size, speed), results, args.out, args.json)
    return results


if __name__ == '__main__':
    main()
