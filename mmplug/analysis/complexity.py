"""Params, MACs and forward speed of mmdet/mmseg configs against the config each modifies.

A config's *baseline* is the first ``mmdet::``/``mmseg::`` entry met walking its ``_base_``
depth-first (``find_baseline``). Both models are built on the CPU with random weights
(``build_model``: no checkpoint is read or downloaded, SyncBN becomes BN), one image goes
through backbone, neck and heads in ``mode='tensor'`` (``measure``: params and
``mmplug.analysis.macs.count_macs``), each baseline is measured once however many configs
share it, and with ``speed`` every config is timed paired with its baseline
(``_paired_speed``). ``tools/analysis/config_complexity.py`` is the command line (inputs,
options, usage); import this module to run it from Python::

    from mmplug.analysis import complexity
    results = complexity.run(complexity.find_configs(['configs/sge']), shape=(128, 128))
    print(complexity.to_markdown(results), end='')
"""
import functools
import importlib
import os
import os.path as osp
import statistics

import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from mmplug.analysis.macs import count_macs
from mmplug.analysis.report import MIB, fmt, fmt_speed, speed_note
from mmplug.analysis.timing import forward_speed, progress_bar

#: default_scope -> (task, data sample class in ``<scope>.structures``, default H, W)
SCOPES = {
    'mmdet': ('detection', 'DetDataSample', (800, 1344)),
    'mmseg': ('segmentation', 'SegDataSample', (512, 1024)),
}
BASE_PREFIXES = tuple(f'{scope}::' for scope in SCOPES)

#: Footnotes of the table: always the first, the others where a row needs them.
FOOTNOTES = dict(
    all='MACs: `torch.utils.flop_counter.FlopCounterMode` FLOPs / 2 (aten conv, matmul, '
    'attention); elementwise ops, pooling, normalisation, interpolation, RoIAlign and NMS '
    'are not counted, as in fvcore/mmengine counters. Params: all parameters of the built '
    'inference model. Random weights, batch 1, eval mode, CPU.',
    detection='Detectors: backbone, neck and heads (`mode=\'tensor\'`). In two-stage '
    'detectors the RPN\'s NMS is switched off (IoU threshold 1.0) so that the RoI head gets '
    '`test_cfg.rpn.max_per_img` proposals, the count trained weights normally reach; with '
    'random weights NMS would keep a random number.',
    segmentation='Segmentors: backbone, neck and decode head; the auxiliary head (training '
    'only) is neither run nor counted in params, as in mmseg\'s `get_flops.py`.',
    deform='`*`: MACs include deformable convs (mmcv `DeformConv2d`/`ModulatedDeformConv2d` '
    'and subclasses such as `DCNv2UnitMask`) counted as their dense conv, '
    '`H_out * W_out * C_out * C_in / groups * k * k`, through forward hooks: FlopCounterMode '
    'does not see mmcv ops (their offset convs are counted by it); bilinear sampling is not '
    'counted.',
)


def find_configs(paths):
    """Config files of ``paths``: files as given, folders walked recursively.

    In a folder, demo twins (``_demo_`` in the file name) and everything under a
    ``_base_`` folder are skipped. Order: as given, each folder sorted; no duplicates.
    """
    found = []
    for path in paths:
        if osp.isfile(path):
            found.append(path)
        elif osp.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d != '_base_' and not d.startswith('.'))
                found += [osp.join(root, f) for f in sorted(files)
                          if f.endswith('.py') and '_demo_' not in f]
        else:
            raise FileNotFoundError(f'{path}: no such config file or folder')
    return list(dict.fromkeys(osp.normpath(f) for f in found))


def find_baseline(config_file):
    """The first ``mmdet::``/``mmseg::`` base of ``config_file``, or None if it has none.

    Walks ``_base_`` depth-first in listed order, following local base files.
    """
    # mmengine's own parser of a config's ``_base_`` (ast, no execution of the file)
    for base in Config._get_base_files(config_file):
        if base.startswith(BASE_PREFIXES):
            return base
        if '::' not in base:
            found = find_baseline(osp.join(osp.dirname(config_file), base))
            if found is not None:
                return found
    return None


def load_config(config):
    """Config of a file or of an OpenMMLab name (``mmdet::faster_rcnn/...py``)."""
    if '::' in config:
        config, _ = Config._get_cfg_path(config, '')  # the installed package's file
    return Config.fromfile(config)


def check_shape(shape):
    """Raise ``ValueError`` unless ``shape`` is (H, W), positive and divisible by 32."""
    if (len(shape) != 2 or not all(isinstance(s, int) and s > 0 and s % 32 == 0
                                   for s in shape)):
        raise ValueError(f'shape must be (H, W), positive and divisible by 32 (the FPN and '
                         f'mmdet/mmseg padding stride), got {tuple(shape)}')


def _strip_for_cpu(node):
    """In place: no weights to load, no SyncBN (it needs a process group)."""
    if isinstance(node, dict):
        for key, value in list(node.items()):
            if key == 'init_cfg':
                node[key] = None
            elif key == 'pretrained':
                node[key] = False if isinstance(value, bool) else None
            elif key == 'type' and isinstance(value, str) and value.endswith('SyncBN'):
                node[key] = 'BN'  # SyncBN (torch) and MMSyncBN (mmcv)
            else:
                _strip_for_cpu(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _strip_for_cpu(value)


def _scope_of(cfg, config):
    scope = cfg.get('default_scope')
    if scope is None and '::' in config:
        scope = config.partition('::')[0]
    if scope not in SCOPES:
        raise ValueError(f'{config}: default_scope must be one of {sorted(SCOPES)} to know '
                         f'which library builds the model, got {scope!r}')
    return scope


def build_model(config):
    """Build the model of ``config`` (file or ``mmdet::``/``mmseg::`` name) in eval mode.

    Returns ``(model, scope)``. Random weights: nothing is downloaded.
    """
    cfg = load_config(config)
    scope = _scope_of(cfg, config)
    model_cfg = cfg.model
    _strip_for_cpu(model_cfg)
    if scope == 'mmseg' and model_cfg.get('auxiliary_head') is not None:
        model_cfg.auxiliary_head = None  # training only
    rpn_nms = (model_cfg.get('test_cfg') or {}).get('rpn', {}).get('nms')
    if rpn_nms is not None:
        rpn_nms.iou_threshold = 1.0  # keep max_per_img proposals (FOOTNOTES)
    importlib.import_module(f'{scope}.utils').register_all_modules(init_default_scope=False)
    models = importlib.import_module(f'{scope}.registry').MODELS
    with DefaultScope.overwrite_default_scope(scope):
        model = models.build(model_cfg)
    model.eval()
    return model, scope


def make_inputs(scope, shape=None, batch=1, device=None):
    """``(shape, inputs, data_samples)`` for ``model(inputs, data_samples, mode='tensor')``.

    ``inputs`` is a random ``batch x 3 x H x W`` tensor (``shape`` or the
    scope's default), one data sample per image with the metainfo of an
    unscaled, unpadded image.
    """
    _, sample_name, default_shape = SCOPES[scope]
    shape = tuple(shape or default_shape)
    check_shape(shape)
    sample_cls = getattr(importlib.import_module(f'{scope}.structures'), sample_name)
    meta = dict(img_shape=shape, ori_shape=shape, pad_shape=shape, batch_input_shape=shape,
                scale_factor=(1.0, 1.0))
    inputs = torch.randn(batch, 3, *shape, device=device)
    return shape, inputs, [sample_cls(metainfo=meta) for _ in range(batch)]


def measure(model, scope, shape=None):
    """Params and MACs of ``model`` (built by ``build_model``) on one ``1x3xHxW`` image.

    Returns a dict: ``task``, ``shape`` [H, W], ``params``, ``macs`` (deformable
    convs included) and ``deform_macs`` (the part added for deformable convs).
    """
    shape, inputs, samples = make_inputs(scope, shape)
    macs, deform_macs = count_macs(model, lambda: model(inputs, samples, mode='tensor'))
    return dict(task=SCOPES[scope][0], shape=list(shape),
                params=sum(p.numel() for p in model.parameters()), macs=macs,
                deform_macs=deform_macs)


def _build_and_measure(config, shape=None):
    """``(model, scope, measurement)`` of ``config``, seeded: the same numbers every run."""
    torch.manual_seed(0)
    model, scope = build_model(config)
    return model, scope, measure(model, scope, shape)


def measure_config(config, shape=None):
    """``measure`` of ``build_model(config)``, seeded: the same numbers every run."""
    return _build_and_measure(config, shape)[2]


def _display_name(path):
    rel = osp.relpath(path)
    return path if rel.startswith('..') else rel


def _progress(items):
    bar = progress_bar(len(items), unit='model')
    try:
        for item in items:
            yield item
            bar.update()
    finally:
        bar.close()


def _timed_pairs(jobs, baseline):
    """How many ``forward_speed`` runs ``_paired_speed`` makes for a group."""
    return len(jobs) - 1 if baseline is not None else 1


def _paired_speed(forwards, batch, device, warmup, repeats, baseline=None, on_round=None):
    """``timing.forward_speed`` of each config **paired with its baseline**.

    Every config is timed against the baseline alone: the two alternate, their
    order swapped every round, so each ratio compares forwards seconds apart
    (a round of a whole group, ~15 Faster R-CNNs, took ~50 s on 2 CPU threads).
    The baseline's own row pools its samples from every pair. Without a
    baseline (a config whose ``_base_`` has none) the one config is timed alone.
    """
    if baseline is None:
        return forward_speed(forwards, batch, device, warmup, repeats, None, on_round)
    speeds, base_samples, base_row = {}, [], None
    for job, forward in forwards.items():
        if job == baseline:
            continue
        pair = forward_speed({baseline: forwards[baseline], job: forward}, batch, device,
                             warmup, repeats, baseline, on_round)
        speeds[job] = pair[job]
        base_row = pair[baseline]
        base_samples += base_row['fwd_samples_ms']
    ms = statistics.median(base_samples)
    speeds[baseline] = dict(base_row, fwd_ms=ms, fwd_samples_ms=base_samples,
                            img_s=batch / ms * 1e3, speed_vs_baseline=1.0,
                            speed_vs_baseline_iqr=[1.0, 1.0])
    return speeds


def _measure_and_time(groups, shape, speed, progress=True):
    """``measure_config`` of every job of ``groups`` plus its forward speed.

    Each group (a baseline first, then the configs measured against it; or one
    config without a baseline) is built at once and timed by ``_paired_speed``:
    every config alternating with its baseline. Returns {job: measurement with
    the speed keys}.
    """
    device = torch.device(speed['device'])
    batch, warmup, repeats = speed['batch'], speed['warmup'], speed['repeats']
    total = sum(len(jobs) + _timed_pairs(jobs, baseline) * (warmup + repeats)
                for jobs, baseline in groups)
    bar = progress_bar(total, 'measure + time', 'step') if progress else None
    tick = None if bar is None else bar.update
    measured = {}
    try:
        for jobs, baseline in groups:
            forwards = {}
            for job in jobs:
                try:
                    model, scope, measured[job] = _build_and_measure(job, shape)
                    _, inputs, samples = make_inputs(scope, shape, batch, device)
                    forwards[job] = functools.partial(model.to(device), inputs, samples,
                                                      mode='tensor')
                except Exception as err:
                    raise RuntimeError(f'measuring {job} failed: {err}') from err
                if tick is not None:
                    tick()
            try:
                speeds = _paired_speed(forwards, batch, device, warmup, repeats, baseline, tick)
            except Exception as err:
                raise RuntimeError(f'timing {", ".join(jobs)} failed: {err}') from err
            del forwards  # free the group's models
            for job, row in speeds.items():
                measured[job].update(row)
    finally:
        if bar is not None:
            bar.close()
    return measured


def run(configs, shape=None, speed=None, progress=True):
    """Measure ``configs`` (files) and their baselines, each baseline once.

    With ``speed`` (``options.speed_meta``: ``device``, ``batch``, ``warmup``,
    ``repeats``) every baseline is also timed interleaved with its configs
    (``_measure_and_time``).

    Returns a JSON-able dict: ``baselines`` {name: measurement} and ``configs``, a list
    of measurements with ``config``, ``baseline`` and the differences to it (``d_params``,
    ``d_params_pct``, ``d_macs``, ``d_macs_pct``; None without a baseline). With
    ``speed``, every measurement also has ``img_s``, ``speed_vs_baseline`` (None
    without a baseline), ``fwd_ms``, ``fwd_samples_ms`` and ``peak_bytes`` (CUDA),
    and the dict a ``speed`` entry: how the speed was measured.
    """
    baseline_of = {config: find_baseline(config) for config in configs}
    baselines = list(dict.fromkeys(b for b in baseline_of.values() if b is not None))
    measured = {}
    if speed is None:
        jobs = baselines + list(configs)
        for job in _progress(jobs) if progress else jobs:
            try:
                measured[job] = measure_config(job, shape)
            except Exception as err:
                raise RuntimeError(f'measuring {job} failed: {err}') from err
    else:
        groups = [([b] + [c for c in configs if baseline_of[c] == b], b) for b in baselines]
        groups += [([c], None) for c in configs if baseline_of[c] is None]
        measured = _measure_and_time(groups, shape, speed, progress)
    rows = []
    for config in configs:
        row = dict(config=_display_name(config), baseline=baseline_of[config], **measured[config])
        base = measured.get(row['baseline'])
        for key in ('params', 'macs'):
            diff = None if base is None else row[key] - base[key]
            row[f'd_{key}'] = diff
            row[f'd_{key}_pct'] = None if base is None else diff / base[key] * 100
        rows.append(row)
    results = dict(baselines={b: measured[b] for b in baselines}, configs=rows)
    if speed is not None:
        results['speed'] = speed
    return results


def _pct(value):
    return f'{value:+.3g}%'


def to_markdown(results):
    """The table (baseline rows first, then the configs measured against them) and footnotes."""
    rows = results['configs']
    measured = list(results['baselines'].values()) + rows
    shapes = {}
    for row in measured:
        shapes.setdefault(row['task'], row['shape'])
    notes = ['all', *shapes, 'deform' if any(m['deform_macs'] for m in measured) else None]
    speed = results.get('speed')
    cuda = speed is not None and speed['device'].startswith('cuda')
    extra = ['img/s', 'speed vs baseline'] + (['peak MiB'] if cuda else []) if speed else []
    lines = ['Params and MACs for one image, ' + ', '.join(
        f'{task} 1x3x{h}x{w}' for task, (h, w) in shapes.items())
        + (f'; forward img/s at batch {speed["batch"]} of the same size' if speed else '')
        + '.', '',
        '| config | baseline | params (M) | d params | GMACs | d GMACs |'
        + ''.join(f' {c} |' for c in extra),
        '| --- | --- | ---: | ---: | ---: | ---: |' + ' ---: |' * len(extra)]

    def line(name, baseline, m, d_params, d_macs):
        star = '*' if m['deform_macs'] else ''
        cells = [fmt(m['img_s']), fmt_speed(m)] if speed else []
        if cuda:
            cells.append(fmt(m['peak_bytes'] / MIB))
        lines.append(f'| {name} | {baseline} | {m["params"] / 1e6:.2f} | {d_params} '
                     f'| {m["macs"] / 1e9:.3f}{star} | {d_macs} |'
                     + ''.join(f' {c} |' for c in cells))

    for name, m in results['baselines'].items():
        line(name, '(baseline)', m, '-', '-')
    for row in rows:
        if row['baseline'] is None:
            line(row['config'], '-', row, '-', '-')
        else:
            line(row['config'], row['baseline'], row,
                 f'{row["d_params"]:+,} ({_pct(row["d_params_pct"])})',
                 f'{row["d_macs"] / 1e9:+.3f} ({_pct(row["d_macs_pct"])})')
    lines.append('')
    notes = [note for note in notes if note]
    texts = [FOOTNOTES[note] for note in notes]
    if speed:
        texts.append(speed_note(speed, paired=True) + (
            ' Two-stage detectors are timed with the RPN\'s NMS off as in note '
            f'{notes.index("detection") + 1}, so a config and its baseline run their RoI heads '
            'on the same number of proposals (the NMS call itself is timed).'
            if 'detection' in notes else ''))
    lines += [f'{i}. {text}' for i, text in enumerate(texts, 1)]
    return '\n'.join(lines) + '\n'
