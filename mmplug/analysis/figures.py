"""The figure of each probe, the predictions figure, and the summary sheet with its index.

``draw_probe(probe, ctx, path)`` draws a computed probe (``mmplug.analysis.probes``) with
the functions of ``mmplug.analysis.drawing``; ``draw_predictions`` draws the model's
detections or segmentation through mmdet's/mmseg's visualizer; ``write_summary`` writes
``summary.png`` (every figure as a thumbnail) and ``index.md``. ``visualize.run`` calls them.
"""
import math
import os.path as osp

import numpy as np
import torch
import torch.nn.functional as F

from mmplug.analysis.drawing import (
    ATTN_CMAP,
    GATE_CMAP,
    SIGNED_CMAP,
    bars,
    overlay,
    profile,
    show_image,
    value_range,
)
from mmplug.analysis.probes import (
    ASFFProbe,
    CBAMProbe,
    DeformProbe,
    MPMBlockProbe,
    NonLocalProbe,
    SEProbe,
    SGEProbe,
    STNProbe,
    StripPoolingProbe,
)

__all__ = ['FIGURES', 'draw_predictions', 'draw_probe', 'write_summary']

#: At most this many SGE groups get a map of their own.
SGE_MAX_GROUPS = 64


def draw_se(fig, ctx, probe):
    """The channel gate as bars, the top-k labelled."""
    ax = fig.add_subplot(1, 1, 1)
    bars(ax, probe.result['channel'], ctx.topk, 'channel gate s_c')


def draw_cbam(fig, ctx, probe):
    """The channel gate as bars; the spatial gate over the image."""
    spatial = probe.result['spatial']
    if spatial is None:  # no_spatial: the channel gate alone
        bars(fig.add_subplot(1, 1, 1), probe.result['channel'], ctx.topk, 'channel gate M_c')
        return
    axes = fig.subplots(1, 2, gridspec_kw=dict(width_ratios=[1.5, 1]))
    bars(axes[0], probe.result['channel'], ctx.topk, 'channel gate M_c')
    overlay(fig, axes[1], ctx, spatial, 'spatial gate M_s', GATE_CMAP)


def draw_sge(fig, ctx, probe):
    """The mean of the group gates over the image; the gate of each group in a grid."""
    groups = probe.result['groups']
    shown = groups[:SGE_MAX_GROUPS]
    left, right = fig.subfigures(1, 2, width_ratios=[1, 1.35])
    ax = left.subplots()
    overlay(left, ax, ctx, groups.mean(0), f'mean of the {len(groups)} group gates',
            GATE_CMAP)
    cols = math.ceil(math.sqrt(len(shown)))
    rows = math.ceil(len(shown) / cols)
    axes = np.atleast_1d(right.subplots(rows, cols)).ravel()
    vmin, vmax = value_range(shown)
    im = None
    for g, ax in enumerate(axes):
        ax.set_axis_off()
        if g < len(shown):
            im = ax.imshow(shown[g], cmap=GATE_CMAP, vmin=vmin, vmax=vmax,
                           interpolation='nearest')
            ax.set_title(f'g{g}', fontsize=7, pad=1)
    right.suptitle(f'gate sigmoid(a_i) per group (feature grid '
                   f'{shown.shape[1]}x{shown.shape[2]})'
                   + (f', first {len(shown)}' if len(shown) < len(groups) else ''),
                   fontsize=9)
    right.colorbar(im, ax=list(axes), shrink=0.8, label='gate')


def draw_strip_pooling(fig, ctx, probe):
    """The gate (channel mean) over the image; the two strip profiles."""
    r = probe.result
    axes = fig.subplots(1, 3, gridspec_kw=dict(width_ratios=[1.3, 1, 1]))
    overlay(fig, axes[0], ctx, r['gate'], 'gate, mean over channels', GATE_CMAP)
    profile(axes[1], r['strip_h'], 'H strip: conv_h(mean over W)', 'row', vertical=True)
    profile(axes[2], r['strip_w'], 'W strip: conv_w(mean over H)', 'column')


def draw_mpm_block(fig, ctx, probe):
    """The channel means of both branches and of the residual, over the image."""
    axes = fig.subplots(1, 3)
    titles = dict(short='short range (pyramid pooling)', long='long range (strip pooling)',
                  residual='residual added (expand)')
    for ax, key in zip(axes, titles):
        overlay(fig, ax, ctx, probe.result[key], titles[key] + '\nchannel mean', SIGNED_CMAP,
                signed=True)


def draw_stn(fig, ctx, probe):
    """Where each output position samples (``A_theta`` grid); the image warped by it."""
    theta = probe.result['theta']
    h, w = probe.feature_hw()
    axes = fig.subplots(1, 2)
    ax = axes[0]
    show_image(ax, ctx)
    lines = min(12, max(h, w))
    us = np.linspace(-1, 1, 4 * lines + 1)
    for t in np.linspace(-1 + 1 / lines, 1 - 1 / lines, lines):
        for u, v in ((us, np.full_like(us, t)), (np.full_like(us, t), us)):
            sx, sy = theta[0, 0] * u + theta[0, 1] * v + theta[0, 2], \
                theta[1, 0] * u + theta[1, 1] * v + theta[1, 2]
            ax.plot(*ctx.norm_to_image(u, v), color='0.9', lw=2.0, alpha=0.8)
            ax.plot(*ctx.norm_to_image(sx, sy), color='tab:red', lw=1.2, ls='--')
    ax.set_title('where each output position samples\n'
                 '(red dashed: A_theta grid, light grey: identity)',
                 fontsize=9)
    ax.set_xlim(*ctx.xlim)
    ax.set_ylim(*ctx.ylim)
    # The image warped as the features are, output(p) = input(A_theta p): the module has no
    # method that samples a 3-channel image, so torch's sampler applies theta here (the
    # align_corners=False convention of mmplug's STN).
    img = torch.from_numpy(ctx.padded_image).permute(2, 0, 1)[None].float()
    grid = F.affine_grid(torch.from_numpy(theta)[None], img.shape, align_corners=False)
    warped = F.grid_sample(img, grid, align_corners=False).clamp(0, 255)[0].permute(1, 2, 0)
    axes[1].imshow(warped.numpy().astype(np.uint8), extent=ctx.pad_extent)
    axes[1].set_xlim(*ctx.xlim)
    axes[1].set_ylim(*ctx.ylim)
    axes[1].set_axis_off()
    axes[1].set_title('image warped by the same transform\n' + 'theta = ['
                      + '; '.join(' '.join(f'{v:.2f}' for v in row) for row in theta) + ']',
                      fontsize=9)


def draw_non_local(fig, ctx, probe):
    """The attention of the query over the image, and over the key grid."""
    attn = probe.result['attn']
    axes = fig.subplots(1, 2)
    overlay(fig, axes[0], ctx, attn, 'attention of the query (x) over the image',
            ATTN_CMAP, vmin=0)
    for ax in axes[:1]:
        ax.plot(ctx.query[1], ctx.query[0], 'x', color='cyan', ms=12, mew=3)
    im = axes[1].imshow(attn * attn.size, cmap=ATTN_CMAP, interpolation='nearest')
    qy, qx = probe.result['q']
    if attn.shape == probe.feature_hw():
        axes[1].plot(qx, qy, 'x', color='cyan', ms=10, mew=2)
    axes[1].set_title(f'same, x uniform (1 = 1/{attn.size}), key grid '
                      f'{attn.shape[0]}x{attn.shape[1]}', fontsize=9)
    axes[1].set_xlabel('key column')
    axes[1].set_ylabel('key row')
    fig.colorbar(im, ax=axes[1], shrink=0.8, label='weight x number of keys')


def draw_deform(fig, ctx, probe):
    """The sampling points of the taps for a few points; the mean offset length."""
    r = probe.result
    axes = fig.subplots(1, 2)
    ax = axes[0]
    show_image(ax, ctx)
    colours = ['cyan', 'yellow', 'lime', 'magenta', 'orange', 'white']
    sc = None
    ys, xs = [0, ctx.img_hw[0]], [0, ctx.img_hw[1]]
    for i, p in enumerate(r['points']):
        (by, bx), (sy, sx) = p['base'], p['sampled']
        ys += [*by, *sy]
        xs += [*bx, *sx]
        groups = len(sy) // len(by)  # displacement of every tap (and deform group)
        ax.plot(np.stack([np.tile(bx, groups), sx]), np.stack([np.tile(by, groups), sy]),
                color=colours[i % len(colours)], lw=0.8)
        ax.scatter(bx, by, s=30, facecolors='none', edgecolors='0.85', linewidths=1)
        sizes = 10 + 50 * p['mask'] / r['mask_max']
        sc = ax.scatter(sx, sy, s=sizes, c=p['mask'], cmap='plasma', vmin=0,
                        vmax=r['mask_max'], edgecolors=colours[i % len(colours)],
                        linewidths=0.8, zorder=3)
        ax.plot(p['point'][1], p['point'][0], '+', color=colours[i % len(colours)], ms=14,
                mew=2.5, zorder=4)
    # taps may fall outside the image (padding, large offsets): keep them in view
    margin = 0.03 * max(ctx.img_hw)
    ax.set_xlim(min(xs) - margin, max(xs) + margin)
    ax.set_ylim(max(ys) + margin, min(ys) - margin)
    ax.set_axis_on()
    ax.tick_params(labelsize=7)
    ax.set_title('sampling points of the taps for each + (grey rings: regular grid,\n'
                 'lines: offsets; pixels of the network input)\n'
                 f'colour/size: {r["mask_name"]}', fontsize=9)
    if sc is not None:
        fig.colorbar(sc, ax=ax, shrink=0.8, label=r['mask_name'])
    overlay(fig, axes[1], ctx, r['length'], 'mean offset length over the taps\n'
            '(pixels of the layer\'s input)', 'inferno', vmin=0)


def draw_asff(fig, ctx, probe):
    """The fusion weight of every source level (columns) per output level (rows)."""
    weights = probe.result['weights']
    n = len(weights)
    axes = np.array(fig.subplots(n, n, squeeze=False))
    im = None
    vmin, vmax = value_range(np.concatenate([w.ravel() for w in weights]), pad=0.02)
    for level, w in enumerate(weights):
        for src in range(n):
            ax = axes[level, src]
            im = overlay(None, ax, ctx, w[src], None, GATE_CMAP, vmin=vmin, vmax=vmax,
                         alpha=0.85)
            ax.text(0.02, 0.03, f'mean {w[src].mean():.2f}', transform=ax.transAxes,
                    fontsize=8, color='white',
                    bbox=dict(facecolor='black', alpha=0.5, pad=1, lw=0))
            if level == 0:
                ax.set_title(f'source {src}\n(stride x{probe.result["strides"][src]})',
                             fontsize=9)
            if src == 0:
                ax.set_axis_on()
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_ylabel(f'output {level}\n{w.shape[1]}x{w.shape[2]}', fontsize=9)
    fig.colorbar(im, ax=list(axes.ravel()), shrink=0.6,
                 label='fusion weight alpha (sums to 1 over the sources of a row)')


#: probe class -> ``draw(fig, ctx, probe)``
FIGURES = {SEProbe: draw_se, CBAMProbe: draw_cbam, SGEProbe: draw_sge,
           StripPoolingProbe: draw_strip_pooling, MPMBlockProbe: draw_mpm_block,
           STNProbe: draw_stn, NonLocalProbe: draw_non_local, DeformProbe: draw_deform,
           ASFFProbe: draw_asff}


#: Figure size (inches) per kind; others (deformable convs) 11 x 4.2.
FIGSIZE = {'SE': (9, 3.6), 'CBAM': (11, 3.8), 'SGE': (13, 5.5), 'StripPooling': (13, 3.8),
           'MPMBlock': (14, 3.8), 'STN': (10, 4.2), 'NonLocal': (10.5, 4.2), 'ASFF': (12, 10)}


def _image_width_factor(ctx):
    """Wide images (mmseg's 256x128) get wider figures."""
    h, w = ctx.img_hw
    return min(max(w / h, 1.0), 2.0)



def _draw_function(probe):
    for cls in type(probe).__mro__:  # DCNv2UnitMaskProbe is drawn as a DeformProbe
        if cls in FIGURES:
            return FIGURES[cls]
    raise KeyError(f'no figure for {type(probe).__name__}')


def draw_probe(probe, ctx, path):
    """The figure of ``probe`` (after ``compute``) as a PNG at ``path``."""
    import matplotlib.pyplot as plt
    w, h = FIGSIZE.get(probe.kind, (11, 4.2))
    if probe.kind not in ('SE', 'ASFF'):
        w *= 0.5 + 0.5 * _image_width_factor(ctx)
    elif probe.kind == 'ASFF':
        w *= _image_width_factor(ctx) ** 0.8
    fig = plt.figure(figsize=(w, h), layout='constrained')
    _draw_function(probe)(fig, ctx, probe)
    fig.suptitle(f'{probe.name}  [{probe.kind}]   {ctx.title}\n{ctx.note}', fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)



def draw_predictions(model_out, sample, scope, meta, ctx, path, score_thr):
    """The model's detections/segmentation through mmdet's/mmseg's visualizer."""
    import matplotlib.pyplot as plt
    import mmcv
    img_path = sample.metainfo.get('img_path')
    image = mmcv.imread(img_path, channel_order='rgb')
    pred = model_out
    has_gt = ('gt_instances' in pred and len(pred.gt_instances) > 0) if scope == 'mmdet' \
        else 'gt_sem_seg' in pred
    name = f'mmplug_vis_{id(pred)}'
    if scope == 'mmdet':
        from mmdet.visualization import DetLocalVisualizer
        vis = DetLocalVisualizer(name=name)
        vis.dataset_meta = meta
        vis.add_datasample('pred', image, pred, draw_gt=has_gt, draw_pred=True,
                           pred_score_thr=score_thr)
        kept = int((pred.pred_instances.scores >= score_thr).sum())
        text = (f'{kept} of {len(pred.pred_instances)} detections with score >= {score_thr}'
                + ('  (left: ground truth, right: prediction)' if has_gt else ''))
    else:
        from mmseg.visualization import SegLocalVisualizer
        vis = SegLocalVisualizer(name=name)
        vis.set_dataset_meta(classes=meta.get('classes'), palette=meta.get('palette'))
        vis.add_datasample('pred', image, pred, draw_gt=has_gt, draw_pred=True,
                           with_labels=False)
        labels = np.unique(pred.pred_sem_seg.data.cpu().numpy())
        classes = meta.get('classes') or []
        text = ('predicted classes: ' + ', '.join(classes[i] if i < len(classes) else str(i)
                                                  for i in labels[:8])
                + (' ...' if len(labels) > 8 else '')
                + ('  (left: ground truth, right: prediction)' if has_gt else ''))
    drawn = vis.get_image()
    h, w = drawn.shape[:2]
    fig = plt.figure(figsize=(min(max(4.5 * w / h, 5), 16), 5), layout='constrained')
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(drawn)
    ax.set_axis_off()
    ax.set_title(f'predictions  {ctx.title}\n{ctx.note}\n{text}', fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return text


def write_summary(entries, out_dir, columns=4, thumb_width=420):
    """``summary.png``: every figure as a labelled thumbnail; ``index.md``: the list."""
    from PIL import Image, ImageDraw
    thumbs = []
    for entry in entries:
        with Image.open(osp.join(out_dir, entry['file'])) as im:
            im = im.convert('RGB')
            im.thumbnail((thumb_width, thumb_width))
            thumbs.append((entry, im.copy()))
    label_h = 16
    cell_h = max(im.height for _, im in thumbs) + label_h
    rows = math.ceil(len(thumbs) / columns)
    sheet = Image.new('RGB', (columns * thumb_width, rows * cell_h), 'white')
    draw = ImageDraw.Draw(sheet)
    for i, (entry, im) in enumerate(thumbs):
        x, y = (i % columns) * thumb_width, (i // columns) * cell_h
        draw.text((x + 4, y + 2), f'{entry["name"]} [{entry["kind"]}]', fill='black')
        sheet.paste(im, (x, y + label_h))
    sheet.save(osp.join(out_dir, 'summary.png'))
    lines = [f'# Plugin visualisation: {entries[0]["title"]}', '', entries[0]['note'], '',
             '![all figures](summary.png)', '', '| module | type | figure | numbers |',
             '| --- | --- | --- | --- |']
    lines += [f'| `{e["name"]}` | {e["kind"]} | [{e["file"]}]({e["file"]}) | {e["summary"]} |'
              for e in entries]
    with open(osp.join(out_dir, 'index.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
