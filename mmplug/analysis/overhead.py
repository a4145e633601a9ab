"""Parameter and FLOP overhead of every mmplug module on ResNet-50, and its forward speed.

Builds mmdet's ``ResNet`` (depth 50, backbone only, all four stage outputs) plain and with
each module at the placement its paper (or docstring ``Note:``) suggests (``VARIANTS``),
counts params and multiply-accumulates (``mmplug.analysis.macs.count_macs``) for one image
and, with ``speed``, times every variant's forward interleaved with the plain ResNet-50
(``timing.forward_speed``) and the share of the plugged forward spent inside the inserted
modules (``time_in_modules``). ``tools/analysis/module_overhead.py`` is the command line;
import this module to run it from Python::

    from mmplug.analysis import overhead
    rows = overhead.run(['ResNet-50', 'SE'], (224, 224))
    print(overhead.to_markdown(rows, (224, 224)), end='')
"""
import time

import torch

import mmplug  # noqa: F401  registers every module
from mmplug.analysis.macs import count_macs
from mmplug.analysis.report import MIB, fmt, fmt_speed, speed_note
from mmplug.analysis.timing import forward_speed, progress_bar
from mmplug.registry import MODELS


def _plugin(cfg, stages, position):
    return dict(plugins=[dict(cfg=cfg, stages=stages, position=position)])


#: ``stages`` of a plugin (or ``stage_with_dcn``): c2-c5, c4, c5, c3-c5.
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
    """mmdet's ResNet-50 backbone (all four stage outputs) in eval mode."""
    from mmdet.models.backbones import ResNet
    model = ResNet(depth=50, out_indices=(0, 1, 2, 3), **kwargs)
    model.eval()  # mmdet's ResNet.train() returns None, so no chaining
    return model


def count(model, size):
    """Return (params, MACs) of one forward pass at ``size`` (H, W)."""
    params = sum(p.numel() for p in model.parameters())
    macs, _ = count_macs(model, lambda: model(torch.randn(1, 3, *size)))
    return params, macs


#: The variant the differences and speed ratios are taken against.
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
        speed (dict, optional): ``options.speed_meta``: also time every variant's
            forward (``device``, ``batch``, ``warmup``, ``repeats``).
        progress (bool): A progress bar over the timing rounds (stderr).

    Returns:
        list[dict]: one per variant: ``module``, ``placement``, ``params``, ``macs``
        and, with ``speed``, ``timing.forward_speed``'s ``img_s``,
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
