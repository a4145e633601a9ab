"""Draw what the plugins of an mmdet/mmseg model compute on one image: the whole run.

``run(config, ...)`` builds the model as ``tools/test.py`` does (``build_model``), pushes
one image through the config's test pipeline and data preprocessor (``load_sample``),
records every supported module with its probe (``mmplug.analysis.probes``) during one
``mode='predict'`` forward, and writes one figure per module instance
(``mmplug.analysis.figures``), ``predictions.png``, ``summary.png`` and ``index.md``.
``tools/analysis/visualize_plugins.py`` is the command line (options, usage); from Python::

    from mmplug.analysis.visualize import run
    entries = run('configs/faster_rcnn_r50_dcn_asff_demo_coco-shapes.py', out_dir='vis')
"""
import contextlib
import logging
import os
import os.path as osp
import sys

import torch

from mmplug.analysis.drawing import Context
from mmplug.analysis.figures import draw_predictions, draw_probe, write_summary
from mmplug.analysis.probes import VisualizeError, find_probes
from mmplug.analysis.timing import progress_bar

__all__ = ['VisualizeError', 'build_model', 'load_config', 'load_sample', 'run']


def _strip_pretrained(node):
    """In place: ``Pretrained`` init_cfgs and ``pretrained`` paths removed (nothing downloaded).

    Returns the checkpoints that were dropped, to say so on the figures.
    """
    dropped = []
    if isinstance(node, dict):
        for key, value in list(node.items()):
            if key == 'init_cfg' and isinstance(value, dict) and value.get('type') == 'Pretrained':
                dropped.append(str(value.get('checkpoint')))
                node[key] = None
            elif key == 'pretrained' and isinstance(value, str):
                dropped.append(value)
                node[key] = None
            else:
                dropped += _strip_pretrained(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            dropped += _strip_pretrained(value)
    return dropped


@contextlib.contextmanager
def _quiet_logger():
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_config(config, cfg_options=None):
    """The config of ``config`` (merged with ``cfg_options``) and its scope, mmdet or mmseg."""
    from mmengine.config import Config
    if not osp.isfile(config):
        raise VisualizeError(f'config {config!r} does not exist (cwd: {os.getcwd()}); pass a '
                             f'config file such as configs/faster_rcnn_r50_dcn_asff_demo_'
                             f'coco-shapes.py')
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = cfg.get('default_scope')
    if scope not in ('mmdet', 'mmseg'):
        raise VisualizeError(f'{config}: default_scope must be mmdet or mmseg (it says which '
                             f'library builds the model and draws its results), got {scope!r}')
    return cfg, scope


def build_model(cfg, scope, checkpoint=None, device='cpu'):
    """Build ``cfg.model`` as ``tools/test.py``'s Runner does and load ``checkpoint``.

    Returns ``(model, weights_note, dataset_meta or None)``.
    """
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS, init_default_scope
    from mmengine.runner import load_checkpoint

    import mmplug  # noqa: F401  registers the modules and allows mmengine's checkpoints

    if checkpoint is not None and not osp.isfile(checkpoint):
        raise VisualizeError(
            f'checkpoint {checkpoint!r} does not exist (cwd: {os.getcwd()}). Train one with '
            f'`python tools/train.py CONFIG` (it writes work_dirs/<config name>/*.pth), or leave '
            f'out --checkpoint to see the modules at the config\'s init')
    init_default_scope(scope)
    model_cfg = cfg.model.copy()
    dropped = _strip_pretrained(model_cfg) if checkpoint is None else []
    model = revert_sync_batchnorm(MODELS.build(model_cfg))  # one process: SyncBN -> BN
    meta = None
    if checkpoint is None:
        with _quiet_logger():  # mmengine logs every parameter's init
            model.init_weights()
        note = 'weights: config init (no checkpoint): values at init, not learned'
        if dropped:
            note += f'; skipped pretrained {", ".join(sorted(set(dropped)))}'
    else:
        ckpt = load_checkpoint(model, checkpoint, map_location='cpu',
                               revise_keys=[(r'^module\.', '')])
        meta = (ckpt.get('meta') or {}).get('dataset_meta')
        note = f'weights: {osp.basename(checkpoint)}'
    return model.to(device).eval(), note, meta


def _dataset_meta(cfg, scope, meta=None):
    """Classes and palette: the checkpoint's, else the test dataset class's merged with cfg's."""
    if meta:
        return meta
    from mmengine.registry import DATASETS
    ds = cfg.test_dataloader.dataset
    while 'dataset' in ds:  # wrappers
        ds = ds.dataset
    cls = DATASETS.get(ds.type) if isinstance(ds.get('type'), str) else None
    meta = dict(getattr(cls, 'METAINFO', {}) or {})
    meta.update(ds.get('metainfo') or {})
    return meta


def load_sample(cfg, scope, image=None, index=0):
    """One image through the test pipeline: the data dict before the data preprocessor.

    ``image`` None: item ``index`` of the config's test set (the embedded demo
    sets are generated first). Otherwise the file, with ``LoadAnnotations``
    dropped from the pipeline (a file has no annotations).
    """
    from mmengine.dataset import Compose
    from mmengine.registry import DATASETS

    if image is None:
        from mmplug.data import prepare_data
        prepare_data(cfg)  # generates data/coco_shapes etc. on first use
        with contextlib.redirect_stdout(sys.stderr):  # pycocotools prints while loading
            dataset = DATASETS.build(cfg.test_dataloader.dataset)
        if not 0 <= index < len(dataset):
            raise VisualizeError(f'--index {index} is out of range: the test set has '
                                 f'{len(dataset)} images')
        return dataset[index]
    if not osp.isfile(image):
        raise VisualizeError(f'image {image!r} does not exist (cwd: {os.getcwd()}); leave out '
                             f'--image to use an image of the config\'s test set')
    pipeline = [t for t in cfg.test_dataloader.dataset.pipeline
                if 'LoadAnnotations' not in str(t.get('type'))]
    info = dict(img_path=image, img_id=0) if scope == 'mmdet' else dict(
        img_path=image, seg_fields=[], reduce_zero_label=False)
    return Compose(pipeline)(info)


def _default_points(sample, ctx):
    """Centres of up to 3 ground-truth boxes (original image pixels), else 3 fixed points."""
    gt = getattr(sample, 'gt_instances', None)
    if gt is not None and 'bboxes' in gt and len(gt.bboxes):
        boxes = gt.bboxes.tensor if hasattr(gt.bboxes, 'tensor') else gt.bboxes
        # gt boxes of the test pipeline are in network-input pixels (Resize scales them)
        return [((b[1] + b[3]).item() / 2 / ctx.scale[0], (b[0] + b[2]).item() / 2 / ctx.scale[1])
                for b in boxes[:3]]
    h, w = sample.metainfo['ori_shape'][:2]
    return [(h / 2, w / 2), (h / 4, w / 4), (3 * h / 4, 3 * w / 4)]


def run(config, checkpoint=None, image=None, index=0, out_dir='vis_plugins', query=None,
        points=None, device='cpu', cfg_options=None, modules=None, max_per_kind=None, topk=5,
        score_thr=0.3, progress=True, seed=0):
    """Write the figures of ``config``'s modules for one image; returns the index entries."""
    import matplotlib
    matplotlib.use('Agg')
    from mmengine.dataset import pseudo_collate

    torch.manual_seed(seed)
    if image is not None and not osp.isfile(image):  # before the slow part
        raise VisualizeError(f'image {image!r} does not exist (cwd: {os.getcwd()}); leave out '
                             f'--image to use an image of the config\'s test set')
    cfg, scope = load_config(config, cfg_options)
    model, note, meta = build_model(cfg, scope, checkpoint, device)
    probes = find_probes(model, modules, max_per_kind)
    sample = load_sample(cfg, scope, image, index)
    os.makedirs(out_dir, exist_ok=True)
    bar = progress_bar(len(probes) * 2 + 3, 'visualize', 'step') if progress else None
    tick = (lambda: None) if bar is None else bar.update
    try:
        for probe in probes:
            probe.attach()
        try:
            with torch.no_grad():
                data = model.data_preprocessor(pseudo_collate([sample]), False)
                result = model(**data, mode='predict')[0]
        finally:
            for probe in probes:
                probe.detach_hooks()
        tick()
        data_sample = data['data_samples'][0]
        raw = sample['inputs']  # [3, h, w] uint8 BGR, resized, unpadded
        rgb = raw.permute(1, 2, 0).numpy()[..., ::-1].copy()
        ori_h, ori_w = data_sample.metainfo['ori_shape'][:2]
        scale = (rgb.shape[0] / ori_h, rgb.shape[1] / ori_w)
        title = f'{osp.basename(config)} | {osp.basename(data_sample.metainfo["img_path"])}'
        ctx = Context(rgb, data['inputs'].shape[-2:], scale, (0, 0), [], topk, note, title)
        query = query or (_default_points(data_sample, ctx)[0])
        points = points or _default_points(data_sample, ctx)
        ctx.query = ctx.clip(ctx.to_input(query))
        ctx.points = [ctx.clip(ctx.to_input(p)) for p in points]
        entries = []
        for probe in probes:
            if not probe.ran:
                print(f'[visualize_plugins] {probe.name} ({probe.kind}) did not run in the '
                      f'forward pass (not on the path to the outputs): skipped',
                      file=sys.stderr)
                tick()
                tick()
                continue
            probe.compute(ctx)
            tick()
            file = f'{probe.name}.png'
            draw_probe(probe, ctx, osp.join(out_dir, file))
            entries.append(dict(name=probe.name, kind=probe.kind, file=file,
                                summary=probe.summary, title=title, note=note))
            tick()
        text = draw_predictions(result, data_sample, scope, _dataset_meta(cfg, scope, meta), ctx,
                                osp.join(out_dir, 'predictions.png'), score_thr)
        entries.append(dict(name='predictions', kind=scope, file='predictions.png', summary=text,
                            title=title, note=note))
        tick()
        write_summary(entries, out_dir)
        tick()
    finally:
        if bar is not None:
            bar.close()
    return entries
