"""Draw what the plugins of an mmdet/mmseg model compute on one image: gates, attention, sampling.

The model is built from the config the way ``tools/test.py`` builds it (the
config's ``default_scope``, mmplug imported, SyncBN reverted to BN), the
checkpoint is loaded if one is given, and one image goes through the config's
test pipeline (``cfg.test_dataloader.dataset.pipeline``) and the model's data
preprocessor, so resizing, normalisation and padding are the real ones. Without
``--image`` it is image ``--index`` of the config's test set; an embedded demo
set (``data/coco_shapes``, ``data/cityscapes_shapes``) is generated on first
use, as by ``tools/train.py``. Without ``--checkpoint`` the weights are the
config's init (``init_weights()`` with ``Pretrained`` inits skipped, nothing is
downloaded), and every figure says so: gates then show their init values.

Modules are found by ``isinstance`` over ``model.named_modules()``. Forward
hooks (``register_forward_hook`` / ``register_forward_pre_hook``) on them and
on their submodules record what one ``mode='predict'`` forward computes; they
return nothing, so no module runs differently. The hooks are removed before
anything is recomputed. Per module type, from what the hooks record:

* ``SE``: the channel gate, the output of its ``gate`` activation: a bar chart
  over the channels, the top-k labelled.
* ``CBAM``: the channel gate ``sigmoid(fc2(h_avg) + fc2(h_max))`` from the
  output ``h`` of its MLP activation ``act`` (its ``fc1``/``fc2`` run as
  ``F.linear`` and fire no hooks; this is the module's ``_channel_gate``
  formula applied to that output), as bars; the spatial gate
  ``sigmoid(spatial_norm output)`` over the image.
* ``SGE``: no submodule carries the gate, so it is recomputed from the captured
  input with the module's ``gate(x)``: one map per group ``G`` in a grid, and
  their mean over the image.
* ``StripPooling``: the gate ``gate_scale * sigmoid(fuse output)`` (channel mean
  over the image, and its range), and the two strip profiles, the channel
  means of the ``conv_h`` (along H) and ``conv_w`` (along W) outputs.
* ``MPMBlock`` (no gate; SPNet's mixed pooling adds a residual): the channel
  means of its short-range (pyramid) and long-range (strip) branches and of
  the residual it adds (``expand``), over the image.
* ``STN``: ``theta = loc_fc(mean(loc_convs output))`` (``loc_fc`` runs as
  ``F.linear``; the module's formula on the ``loc_convs`` output); where every
  output position samples its input, drawn as a warped grid over the image
  (the regular grid in grey), and the image warped by the same transform.
* Deformable convs (``DCNv2UnitMask``, mmcv's ``DCN``/``DCNv2`` packs and their
  plain ``DeformConv2d``/``ModulatedDeformConv2d`` bases): the sampling points of
  the layer's ``k x k`` taps for a few image points (``--points``), from the
  ``conv_offset`` output (mmcv's layout, ``(dy, dx)`` per tap); the modulation
  mask (``2 * sigmoid`` for DCNv2UnitMask, ``sigmoid`` for DCNv2, 1 for DCN)
  as point colour and size; and the mean offset length over the image. These
  are one layer's points on its own input, not compounded through the stack.
* ``ASFF``: ``fusion_weights()`` of the captured neck inputs: per output level
  (rows) the weight of every source level (columns), over the image.
* ``NonLocal``: the attention row of one query position (``--query``),
  ``softmax_j(theta_q . phi_j * scale)``, recomputed from the outputs of its
  ``theta`` and ``phi`` convs (``phi`` through its ``pool``), over the image.

Plus the model's detections (mmdet's ``DetLocalVisualizer``) or segmentation
(mmseg's ``SegLocalVisualizer``), ground truth beside them when the image has
it. Output: one PNG per module instance, named after its path in the model
(``backbone.layer1.0.se.png``), ``predictions.png``, ``summary.png`` (all
figures as thumbnails) and ``index.md`` (the list, with a line of numbers per
figure). Image coordinates (``--query``, ``--points``) are ``Y X`` pixels of the
input image file (before the pipeline's resize).

    python tools/analysis/visualize_plugins.py configs/faster_rcnn_r50_dcn_asff_demo_coco-shapes.py
    python tools/analysis/visualize_plugins.py CONFIG --checkpoint work_dirs/x/epoch_3.pth \\
        --image demo.jpg --out-dir vis/ --query 40 60 --points 40 60 90 30
    python tools/analysis/visualize_plugins.py CONFIG --modules 'backbone.layer4.*' --max-per-kind 2
"""
import argparse
import contextlib
import fnmatch
import logging
import math
import os
import os.path as osp
import sys

import numpy as np
import torch
import torch.nn.functional as F

# sibling script (on sys.path when this one runs)
from _timing import progress_bar

#: Colour maps: gates in [0, 1] (or [0, 2]), signed maps, attention.
GATE_CMAP, SIGNED_CMAP, ATTN_CMAP = 'viridis', 'coolwarm', 'magma'
OVERLAY_ALPHA = 0.6


class VisualizeError(RuntimeError):
    """A problem of the inputs; the message says how to fix it."""


# --------------------------------------------------------------------------- model and image

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
    import mmplug  # noqa: F401  registers the modules and allows mmengine's checkpoints
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS, init_default_scope
    from mmengine.runner import load_checkpoint

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


# --------------------------------------------------------------------------- recording

def _first(store, key, value):
    """Keep the first call's value (a module may run more than once, e.g. slide inference)."""
    store.setdefault(key, value)
    store.setdefault('_calls', {}).setdefault(key, 0)
    store['_calls'][key] += 1


def _detach(x):
    if isinstance(x, torch.Tensor):  # a copy: hosts modify outputs in place (out += identity)
        return x.detach().to('cpu', torch.float32, copy=True)
    if isinstance(x, (list, tuple)):
        return type(x)(_detach(t) for t in x)
    return x


class Probe:
    """Hooks on one module instance and its submodules, and what they recorded.

    Subclasses name the submodule outputs they need (``outputs``: key ->
    submodule path, '' the module itself) and inputs (``inputs``), compute
    their arrays from the records in ``compute`` and draw them in ``draw``.
    """

    kind = ''
    outputs = {}
    inputs = {'x': ''}

    def __init__(self, name, module):
        self.name, self.module, self.store, self.handles = name, module, {}, []
        self.result, self.summary = None, ''

    def attach(self):
        def out_hook(key):
            return lambda mod, args, out: _first(self.store, key, _detach(out))

        def in_hook(key):
            return lambda mod, args: _first(self.store, key, _detach(args))

        for key, path in self.outputs.items():
            sub = self.module.get_submodule(path) if path else self.module
            self.handles.append(sub.register_forward_hook(out_hook(key)))
        for key, path in self.inputs.items():
            sub = self.module.get_submodule(path) if path else self.module
            self.handles.append(sub.register_forward_pre_hook(in_hook(key)))

    def detach_hooks(self):
        for handle in self.handles:
            handle.remove()
        self.handles = []

    @property
    def ran(self):
        return all(k in self.store for k in (*self.outputs, *self.inputs))

    def feature_hw(self):
        return tuple(self.store['x'][0].shape[-2:])

    def compute(self, ctx):
        raise NotImplementedError

    def draw(self, fig, ctx):
        raise NotImplementedError


class SEProbe(Probe):
    kind = 'SE'
    outputs = {'gate': 'gate'}

    def compute(self, ctx):
        gate = self.store['gate'][0].flatten()  # [C]
        self.result = dict(channel=gate.numpy())
        self.summary = _stats('channel gate', gate)

    def draw(self, fig, ctx):
        ax = fig.add_subplot(1, 1, 1)
        _bars(ax, self.result['channel'], ctx.topk, 'channel gate s_c')


class CBAMProbe(Probe):
    kind = 'CBAM'
    outputs = {'hidden': 'act', 'spatial_logit': 'spatial_norm'}

    def compute(self, ctx):
        m = self.module
        h = self.store['hidden'].flatten(1)  # [2N, C/r]: MLP hidden of [avg; max]
        logits = F.linear(h, m.fc2.weight.detach().float().cpu().flatten(1),
                          m.fc2.bias.detach().float().cpu())  # [2N, C]
        n = h.shape[0] // 2
        channel = torch.sigmoid(logits[:n] + logits[n:])[0]  # CBAM._channel_gate
        spatial = torch.sigmoid(self.store['spatial_logit'])[0, 0]  # [H, W]
        self.result = dict(channel=channel.numpy(), spatial=spatial.numpy())
        self.summary = _stats('channel gate', channel) + '; ' + _stats('spatial gate', spatial)

    def draw(self, fig, ctx):
        axes = fig.subplots(1, 2, gridspec_kw=dict(width_ratios=[1.5, 1]))
        _bars(axes[0], self.result['channel'], ctx.topk, 'channel gate M_c')
        _overlay(fig, axes[1], ctx, self.result['spatial'], 'spatial gate M_s', GATE_CMAP)


class SGEProbe(Probe):
    kind = 'SGE'
    max_groups = 64

    def compute(self, ctx):
        m = self.module
        x = self.store['x'][0][:1]
        with torch.no_grad():
            gate = m.gate(x.to(m.weight))[0].float().cpu()  # [G, H, W] for the first image
        self.result = dict(groups=gate.numpy())
        self.summary = _stats(f'gates of {m.groups} groups', gate)

    def draw(self, fig, ctx):
        groups = self.result['groups']
        shown = groups[:self.max_groups]
        left, right = fig.subfigures(1, 2, width_ratios=[1, 1.35])
        ax = left.subplots()
        _overlay(left, ax, ctx, groups.mean(0), f'mean of the {len(groups)} group gates',
                 GATE_CMAP)
        cols = math.ceil(math.sqrt(len(shown)))
        rows = math.ceil(len(shown) / cols)
        axes = np.atleast_1d(right.subplots(rows, cols)).ravel()
        vmin, vmax = _range(shown)
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


class StripPoolingProbe(Probe):
    kind = 'StripPooling'
    outputs = {'fuse': 'fuse', 'strip_h': 'conv_h', 'strip_w': 'conv_w'}

    def compute(self, ctx):
        gate = torch.sigmoid(self.store['fuse'][0]) * self.module.gate_scale  # [C, H, W]
        self.result = dict(gate=gate.mean(0).numpy(), gate_full=gate.numpy(),
                           strip_h=self.store['strip_h'][0].mean(0)[:, 0].numpy(),  # [H]
                           strip_w=self.store['strip_w'][0].mean(0)[0].numpy())  # [W]
        self.summary = _stats('gate', gate)

    def draw(self, fig, ctx):
        r = self.result
        axes = fig.subplots(1, 3, gridspec_kw=dict(width_ratios=[1.3, 1, 1]))
        _overlay(fig, axes[0], ctx, r['gate'], 'gate, mean over channels', GATE_CMAP)
        _profile(axes[1], r['strip_h'], 'H strip: conv_h(mean over W)', 'row', vertical=True)
        _profile(axes[2], r['strip_w'], 'W strip: conv_w(mean over H)', 'column')


class MPMBlockProbe(Probe):
    kind = 'MPMBlock'
    outputs = {'short': 'short_range', 'long': 'long_range', 'residual': 'expand'}

    def compute(self, ctx):
        self.result = {k: self.store[k][0].mean(0).numpy() for k in self.outputs}
        self.summary = _stats('residual (channel mean)', torch.from_numpy(self.result['residual']))

    def draw(self, fig, ctx):
        axes = fig.subplots(1, 3)
        titles = dict(short='short range (pyramid pooling)', long='long range (strip pooling)',
                      residual='residual added (expand)')
        for ax, key in zip(axes, titles):
            _overlay(fig, ax, ctx, self.result[key], titles[key] + '\nchannel mean', SIGNED_CMAP,
                     signed=True)


class STNProbe(Probe):
    kind = 'STN'
    outputs = {'loc': 'loc_convs'}

    def compute(self, ctx):
        m = self.module
        feat = self.store['loc'].mean(dim=(2, 3))  # [N, C']
        theta = F.linear(feat, m.loc_fc.weight.detach().float().cpu(),
                         m.loc_fc.bias.detach().float().cpu())[0].view(2, 3)  # A_theta
        self.result = dict(theta=theta.numpy())
        identity = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
        self.summary = (f'theta = [{", ".join(f"{v:.3f}" for v in theta.flatten().tolist())}], '
                        f'max |theta - I| = {(theta - identity).abs().max().item():.3g}')

    def draw(self, fig, ctx):
        theta = self.result['theta']
        h, w = self.feature_hw()
        axes = fig.subplots(1, 2)
        ax = axes[0]
        _show_image(ax, ctx)
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
        # The image warped as the features are: output(p) = input(A_theta p).
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


class NonLocalProbe(Probe):
    kind = 'NonLocal'
    outputs = {'theta': 'theta', 'phi': 'phi'}

    def compute(self, ctx):
        m = self.module
        theta, phi = self.store['theta'][0], self.store['phi'][:1]  # [C', H, W], [1, C', H, W]
        h, w = theta.shape[-2:]
        keys = m.pool.cpu()(phi)[0] if not isinstance(m.pool, torch.nn.Identity) else phi[0]
        qy, qx = ctx.feature_index(ctx.query, (h, w))
        logits = torch.einsum('c,chw->hw', theta[:, qy, qx], keys) * m.scale
        attn = logits.flatten().softmax(0).view(keys.shape[-2:])  # softmax over keys j
        entropy = -(attn * attn.clamp_min(1e-30).log()).sum()
        self.result = dict(attn=attn.numpy(), q=(qy, qx), keys_hw=tuple(keys.shape[-2:]))
        self.summary = (f'query feature cell ({qy}, {qx}) of {h}x{w}; max weight '
                        f'{attn.max().item():.3g} (uniform {1 / attn.numel():.3g}), entropy '
                        f'{entropy.item():.3g} of {math.log(attn.numel()):.3g} nats')

    def draw(self, fig, ctx):
        attn = self.result['attn']
        axes = fig.subplots(1, 2)
        _overlay(fig, axes[0], ctx, attn, 'attention of the query (x) over the image',
                 ATTN_CMAP, vmin=0)
        for ax in axes[:1]:
            ax.plot(ctx.query[1], ctx.query[0], 'x', color='cyan', ms=12, mew=3)
        im = axes[1].imshow(attn * attn.size, cmap=ATTN_CMAP, interpolation='nearest')
        qy, qx = self.result['q']
        if attn.shape == self.feature_hw():
            axes[1].plot(qx, qy, 'x', color='cyan', ms=10, mew=2)
        axes[1].set_title(f'same, x uniform (1 = 1/{attn.size}), key grid '
                          f'{attn.shape[0]}x{attn.shape[1]}', fontsize=9)
        axes[1].set_xlabel('key column')
        axes[1].set_ylabel('key row')
        fig.colorbar(im, ax=axes[1], shrink=0.8, label='weight x number of keys')


class DeformProbe(Probe):
    """mmcv deformable convs: the ``*Pack`` layers (offsets from ``conv_offset``) and the
    plain ones (offset and mask passed to ``forward``)."""

    kind = 'DCN'

    def __init__(self, name, module):
        super().__init__(name, module)
        self.packed = hasattr(module, 'conv_offset')
        self.outputs = {'offset_out': 'conv_offset'} if self.packed else {}
        self.kind = type(module).__name__

    def _offset_mask(self):
        """``offset`` [2*G*K, Ho, Wo] (mmcv's (dy, dx) per tap) and ``mask`` [G*K, Ho, Wo]."""
        from mmcv.ops import ModulatedDeformConv2d
        modulated = isinstance(self.module, ModulatedDeformConv2d)
        if not self.packed:
            args = self.store['x']
            offset = args[1][0]
            mask = args[2][0] if modulated else torch.ones_like(offset[::2])
            return offset, mask, 'mask' if modulated else 'none (DCNv1)'
        out = self.store['offset_out'][0]
        if not modulated:
            return out, torch.ones_like(out[::2]), 'none (DCNv1)'
        o1, o2, logit = torch.chunk(out, 3, dim=0)
        from mmplug.conv.dcn import DCNv2UnitMask
        scale = 2.0 if isinstance(self.module, DCNv2UnitMask) else 1.0
        return torch.cat((o1, o2)), scale * torch.sigmoid(logit), \
            ('2*sigmoid' if scale == 2 else 'sigmoid') + ' mask'

    def compute(self, ctx):
        m = self.module
        offset, mask, mask_name = self._offset_mask()
        (kh, kw), (sh, sw) = m.kernel_size, m.stride
        (ph, pw), (dh, dw) = m.padding, m.dilation
        k = kh * kw
        ho, wo = offset.shape[-2:]
        off = offset.view(-1, k, 2, ho, wo)  # [G, K, (dy, dx), Ho, Wo]
        in_hw = self.feature_hw()
        taps_y = torch.arange(kh).repeat_interleave(kw).float() * dh
        taps_x = torch.arange(kw).repeat(kh).float() * dw
        points = []
        for py, px in ctx.points:
            oy, ox = ctx.feature_index((py, px), (ho, wo))
            base_y = oy * sh - ph + taps_y  # [K], input feature rows of the regular grid
            base_x = ox * sw - pw + taps_x
            y = base_y + off[:, :, 0, oy, ox]  # [G, K]
            x = base_x + off[:, :, 1, oy, ox]
            points.append(dict(
                point=(py, px), base=ctx.feature_to_image(base_y, base_x, in_hw),
                sampled=ctx.feature_to_image(y.flatten(), x.flatten(), in_hw),
                mask=mask.view(-1, k, ho, wo)[:, :, oy, ox].flatten().numpy()))
        length = off.pow(2).sum(2).sqrt().mean(dim=(0, 1))  # [Ho, Wo], input-feature pixels
        self.result = dict(points=points, length=length.numpy(), mask_name=mask_name,
                           mask_max=2.0 if mask_name.startswith('2') else 1.0)
        self.summary = (f'{kh}x{kw}, stride {sh}, {off.shape[0]} deform group(s); mean offset '
                        f'{length.mean().item():.3g} px of its input (max '
                        f'{length.max().item():.3g}); {_stats(mask_name, mask)}')

    def draw(self, fig, ctx):
        r = self.result
        axes = fig.subplots(1, 2)
        ax = axes[0]
        _show_image(ax, ctx)
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
        _overlay(fig, axes[1], ctx, r['length'], 'mean offset length over the taps\n'
                 '(pixels of the layer\'s input)', 'inferno', vmin=0)


class ASFFProbe(Probe):
    kind = 'ASFF'

    def compute(self, ctx):
        inputs = self.store['x'][0]  # the tuple of levels
        inputs = [x[:1] for x in inputs]
        m = self.module
        with torch.no_grad():
            weights = m.cpu().fusion_weights(inputs)  # tuple of [1, L, H_l, W_l]
        self.result = dict(weights=[w[0].numpy() for w in weights], strides=list(m.strides))
        self.summary = '; '.join(
            f'out {level}: mean weights ' + ' '.join(f'{v:.2f}' for v in w[0].mean((1, 2)))
            for level, w in enumerate(weights))

    def draw(self, fig, ctx):
        weights = self.result['weights']
        n = len(weights)
        axes = np.array(fig.subplots(n, n, squeeze=False))
        im = None
        vmin, vmax = _range(np.concatenate([w.ravel() for w in weights]), pad=0.02)
        for level, w in enumerate(weights):
            for src in range(n):
                ax = axes[level, src]
                im = _overlay(None, ax, ctx, w[src], None, GATE_CMAP, vmin=vmin, vmax=vmax,
                              alpha=0.85)
                ax.text(0.02, 0.03, f'mean {w[src].mean():.2f}', transform=ax.transAxes,
                        fontsize=8, color='white',
                        bbox=dict(facecolor='black', alpha=0.5, pad=1, lw=0))
                if level == 0:
                    ax.set_title(f'source {src}\n(stride x{self.result["strides"][src]})',
                                 fontsize=9)
                if src == 0:
                    ax.set_axis_on()
                    ax.set_xticks([])
                    ax.set_yticks([])
                    ax.set_ylabel(f'output {level}\n{w.shape[1]}x{w.shape[2]}', fontsize=9)
        fig.colorbar(im, ax=list(axes.ravel()), shrink=0.6,
                     label='fusion weight alpha (sums to 1 over the sources of a row)')


def probe_classes():
    """(class, probe) pairs in isinstance order: subclasses before their bases."""
    from mmcv.ops import DeformConv2d, ModulatedDeformConv2d

    from mmplug.necks.asff import ASFF
    from mmplug.necks.mixed_pooling import MPMBlock
    from mmplug.plugins import CBAM, SE, SGE, STN, NonLocal, StripPooling
    return [(SE, SEProbe), (CBAM, CBAMProbe), (SGE, SGEProbe), (StripPooling, StripPoolingProbe),
            (MPMBlock, MPMBlockProbe), (STN, STNProbe), (NonLocal, NonLocalProbe),
            (ModulatedDeformConv2d, DeformProbe), (DeformConv2d, DeformProbe),
            (ASFF, ASFFProbe)]


SUPPORTED = ('SE', 'CBAM', 'SGE', 'StripPooling', 'MPMBlock', 'STN', 'NonLocal',
             'DCNv2UnitMask / mmcv DCN, DCNv2 (DeformConv2d, ModulatedDeformConv2d)', 'ASFF')


def find_probes(model, patterns=None, max_per_kind=None):
    """A probe per supported module of ``model`` (``named_modules`` order), filtered.

    ``patterns``: fnmatch patterns on the module path; ``max_per_kind``: keep the
    first instances of each kind. Raises ``VisualizeError`` listing what the
    model holds when nothing is left.
    """
    classes = probe_classes()
    probes, counts = [], {}
    for name, module in model.named_modules():
        for cls, probe_cls in classes:
            if isinstance(module, cls):
                probe = probe_cls(name, module)
                if patterns and not any(fnmatch.fnmatchcase(name, p) for p in patterns):
                    break
                counts[probe.kind] = counts.get(probe.kind, 0) + 1
                if max_per_kind is None or counts[probe.kind] <= max_per_kind:
                    probes.append(probe)
                break
    if not probes:
        found = {}
        for _, module in model.named_modules():
            if type(module).__module__.startswith(('mmplug', 'mmcv.ops')):
                found[type(module).__name__] = found.get(type(module).__name__, 0) + 1
        parts = ', '.join(f'{name} {type(child).__name__}'
                          for name, child in model.named_children())
        listing = (f'{type(model).__name__}' + (f' ({parts})' if parts else '')
                   + '; mmplug/mmcv.ops modules: '
                   + (', '.join(f'{k} x{v}' for k, v in sorted(found.items())) or 'none'))
        raise VisualizeError(
            'no supported module in the model' + (f' matching --modules {patterns}' if patterns
                                                  else '')
            + f'. Supported: {", ".join(SUPPORTED)}. The model is {listing}. Pick a config '
            f'with one of the supported plugins (e.g. configs/cbam/, configs/sge/, '
            f'configs/faster_rcnn_r50_dcn_asff_demo_coco-shapes.py), add one with '
            f'--cfg-options, or widen --modules')
    return probes


# --------------------------------------------------------------------------- drawing helpers

class Context:
    """The image as the network saw it and coordinate maps between it and feature grids.

    Feature maps cover the padded network input (``pad_hw``); the valid image is
    the top-left ``img_hw`` of it. Image coordinates are pixels of the network
    input; ``--query``/``--points`` are given in the original image and scaled.
    """

    def __init__(self, image, pad_hw, scale, query, points, topk, note, title):
        self.image = image  # [h, w, 3] uint8 RGB, unpadded network input
        h, w = image.shape[:2]
        self.img_hw, self.pad_hw = (h, w), tuple(pad_hw)
        self.padded_image = np.zeros((*self.pad_hw, 3), np.uint8)
        self.padded_image[:h, :w] = image[:self.pad_hw[0], :self.pad_hw[1]]
        self.pad_extent = (0, self.pad_hw[1], self.pad_hw[0], 0)
        self.xlim, self.ylim = (0, w), (h, 0)
        self.scale = scale  # (sy, sx): original image -> network input
        self.query = self.clip(query)
        self.points = [self.clip(p) for p in points]
        self.topk, self.note, self.title = topk, note, title

    def to_input(self, point):
        return point[0] * self.scale[0], point[1] * self.scale[1]

    def clip(self, point):
        return (min(max(point[0], 0), self.img_hw[0] - 1),
                min(max(point[1], 0), self.img_hw[1] - 1))

    def feature_index(self, point, hw):
        """Cell (row, col) of a ``hw`` feature grid that holds image ``point``."""
        return (min(int(point[0] * hw[0] / self.pad_hw[0]), hw[0] - 1),
                min(int(point[1] * hw[1] / self.pad_hw[1]), hw[1] - 1))

    def feature_to_image(self, y, x, hw):
        """Feature coordinates (cell centres at integers) -> image pixels."""
        sy, sx = self.pad_hw[0] / hw[0], self.pad_hw[1] / hw[1]
        return ((np.asarray(y) + 0.5) * sy, (np.asarray(x) + 0.5) * sx)

    def norm_to_image(self, u, v):
        """``[-1, 1]`` (align_corners=False) coordinates -> image ``(x, y)`` for plotting."""
        return (np.asarray(u) + 1) / 2 * self.pad_hw[1], (np.asarray(v) + 1) / 2 * self.pad_hw[0]


def _stats(label, t):
    t = torch.as_tensor(t).float()
    return (f'{label} mean {t.mean().item():.3g} (min {t.min().item():.3g}, '
            f'max {t.max().item():.3g})')


def _range(values, pad=0.05):
    """``(vmin, vmax)`` of ``values``, widened around a constant so it gets one colour."""
    lo, hi = float(values.min()), float(values.max())
    if hi - lo <= 1e-6 * max(1.0, abs(hi)):
        return lo - pad, hi + pad
    return lo, hi


def _show_image(ax, ctx):
    ax.imshow(ctx.image, extent=(0, ctx.img_hw[1], ctx.img_hw[0], 0))
    ax.set_xlim(*ctx.xlim)
    ax.set_ylim(*ctx.ylim)
    ax.set_axis_off()


def _overlay(fig, ax, ctx, fmap, title, cmap, vmin=None, vmax=None, signed=False,
             alpha=OVERLAY_ALPHA):
    """``fmap`` (a feature grid over the padded input) over the image, with a colour bar."""
    _show_image(ax, ctx)
    if signed:
        lim = float(np.abs(fmap).max()) or 1.0
        vmin, vmax = -lim, lim
    elif vmin is None or vmax is None:
        lo, hi = _range(fmap)
        vmin = lo if vmin is None else vmin
        vmax = hi if vmax is None else max(vmax, vmin + 1e-6)
    im = ax.imshow(fmap, extent=ctx.pad_extent, cmap=cmap, alpha=alpha,
                   interpolation='nearest', vmin=vmin, vmax=vmax)
    ax.set_xlim(*ctx.xlim)
    ax.set_ylim(*ctx.ylim)
    if title:
        lo, hi = float(fmap.min()), float(fmap.max())
        flat = f', constant {lo:.3g}' if hi - lo <= 1e-6 * max(1.0, abs(hi)) else ''
        ax.set_title(f'{title}\n(grid {fmap.shape[0]}x{fmap.shape[1]}{flat})', fontsize=9)
    if fig is not None:
        fig.colorbar(im, ax=ax, shrink=0.8)
    return im


def _bars(ax, values, topk, label):
    """A bar per channel from 0; the ``topk`` largest in red, labelled with their index."""
    c = len(values)
    lo, hi = float(values.min()), float(values.max())
    equal = hi - lo <= 1e-6 * max(1.0, abs(hi))
    top = [] if equal else np.argsort(-values, kind='stable')[:topk]
    colours = np.full(c, 'tab:blue', dtype=object)
    colours[top] = 'tab:red'
    ax.bar(np.arange(c), values, width=1.0, color=list(colours), linewidth=0)
    ax.axhline(values.mean(), color='k', lw=0.8, ls='--', label=f'mean {values.mean():.3f}')
    for rank, i in enumerate(top):
        ax.annotate(f'c{i}', (i, values[i]), xytext=(0, 3 + 10 * (rank % 3)),
                    textcoords='offset points', ha='center', fontsize=8, color='tab:red',
                    arrowprops=dict(arrowstyle='-', color='tab:red', lw=0.5))
    ax.set_xlim(-0.5, c - 0.5)
    ax.set_ylim(min(0.0, lo), max(hi, 1e-6) * 1.25)
    ax.set_xlabel(f'channel (of {c})' + (f'; all equal to {hi:.4g}' if equal else
                                         f'; top {len(top)} in red, range {lo:.3g}-{hi:.3g}'))
    ax.set_ylabel(label)
    ax.legend(loc='lower right', fontsize=8)


def _profile(ax, values, title, axis_label, vertical=False):
    from matplotlib.ticker import MaxNLocator
    idx = np.arange(len(values))
    value_axis, index_axis = (ax.xaxis, ax.yaxis) if vertical else (ax.yaxis, ax.xaxis)
    if vertical:
        ax.plot(values, idx, marker='.')
        ax.invert_yaxis()
    else:
        ax.plot(idx, values, marker='.')
    index_axis.set_label_text(f'{axis_label} of the feature grid')
    value_axis.set_label_text('channel mean')
    index_axis.set_major_locator(MaxNLocator(integer=True))
    value_axis.set_major_locator(MaxNLocator(4))
    ax.ticklabel_format(axis='x' if vertical else 'y', style='sci', scilimits=(-2, 3))
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)


FIGSIZE = {'SE': (9, 3.6), 'CBAM': (11, 3.8), 'SGE': (13, 5.5), 'StripPooling': (13, 3.8),
           'MPMBlock': (14, 3.8), 'STN': (10, 4.2), 'NonLocal': (10.5, 4.2), 'ASFF': (12, 10)}


def _image_width_factor(ctx):
    """Wide images (mmseg's 256x128) get wider figures."""
    h, w = ctx.img_hw
    return min(max(w / h, 1.0), 2.0)


def draw_probe(probe, ctx, path):
    import matplotlib.pyplot as plt
    w, h = FIGSIZE.get(probe.kind, (11, 4.2))
    if probe.kind not in ('SE', 'ASFF'):
        w *= 0.5 + 0.5 * _image_width_factor(ctx)
    elif probe.kind == 'ASFF':
        w *= _image_width_factor(ctx) ** 0.8
    fig = plt.figure(figsize=(w, h), layout='constrained')
    probe.draw(fig, ctx)
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


# --------------------------------------------------------------------------- main

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


def _pairs(values, option):
    if values is None:
        return None
    if len(values) % 2:
        raise argparse.ArgumentTypeError(f'{option} takes Y X pairs, got {len(values)} numbers')
    return [(values[i], values[i + 1]) for i in range(0, len(values), 2)]


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='mmdet or mmseg config file')
    parser.add_argument('--checkpoint', help='checkpoint to load (default: the config\'s init)')
    parser.add_argument('--image', help='image file (default: an image of the config\'s test '
                                        'set; embedded demo sets are generated on first use)')
    parser.add_argument('--index', type=int, default=0,
                        help='which test-set image without --image (default 0)')
    parser.add_argument('--out-dir', default='vis_plugins', help='folder for the PNGs')
    parser.add_argument('--query', type=float, nargs=2, metavar=('Y', 'X'),
                        help='query pixel of the NonLocal attention, in the image file\'s '
                             'pixels (default: the first ground-truth box centre, else the '
                             'image centre)')
    parser.add_argument('--points', type=float, nargs='+', metavar='Y X',
                        help='pixels whose DCN sampling points are drawn, Y X pairs (default: '
                             'up to 3 ground-truth box centres, else 3 fixed points)')
    parser.add_argument('--modules', nargs='+', metavar='PATTERN',
                        help='only modules whose path matches one of these fnmatch patterns, '
                             'e.g. "backbone.layer4.*"')
    parser.add_argument('--max-per-kind', type=int,
                        help='at most this many instances of each module type (the first ones)')
    parser.add_argument('--topk', type=int, default=5, help='channels labelled in bar charts')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='score threshold of the drawn detections (mmdet)')
    parser.add_argument('--device', default='cpu', help='device, e.g. cpu or cuda:0')
    parser.add_argument('--seed', type=int, default=0, help='seed of the config\'s init')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, key=value pairs')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)
    try:
        args.points = _pairs(args.points, '--points')
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))
    if args.max_per_kind is not None and args.max_per_kind < 1:
        parser.error(f'--max-per-kind must be >= 1, got {args.max_per_kind}')
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        entries = run(args.config, args.checkpoint, args.image, args.index, args.out_dir,
                      args.query, args.points, args.device, args.cfg_options, args.modules,
                      args.max_per_kind, args.topk, args.score_thr, not args.no_progress,
                      args.seed)
    except VisualizeError as err:
        raise SystemExit(f'visualize_plugins: {err}')
    print(f'{len(entries)} figures in {args.out_dir}: see {osp.join(args.out_dir, "index.md")} '
          f'and summary.png')
    return entries


if __name__ == '__main__':
    main()
