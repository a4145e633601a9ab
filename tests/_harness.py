"""Checks and builders the module test files share (``test_contract.py`` holds the
contract every module meets).

Import as ``from _harness import ...`` (pytest puts ``tests/`` on ``sys.path``).
"""
import copy
import importlib
import importlib.util
import inspect
import os
import os.path as osp

import pytest
import torch
from mmcv.cnn import build_plugin_layer
from mmengine.config import Config
from mmengine.registry import DefaultScope
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

#: The repository root (tools/, configs/).
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def load_tool(path):
    """The script ``tools/<path>`` (e.g. ``'analysis/benchmark_plugins.py'``) as a module."""
    spec = importlib.util.spec_from_file_location(osp.splitext(osp.basename(path))[0],
                                                  osp.join(ROOT, 'tools', path))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def _newer_than_this_torch(what):
    return f'{what} is newer than torch {torch.__version__}'


#: The suite runs from torch 2.1 on; tests of newer features skip with the reason.
needs_onnx_dynamo = pytest.mark.skipif(
    'dynamo' not in inspect.signature(torch.onnx.export).parameters,
    reason=_newer_than_this_torch('torch.onnx.export(dynamo=...)'))
needs_is_exporting = pytest.mark.skipif(not hasattr(torch.compiler, 'is_exporting'),
                                        reason=_newer_than_this_torch('torch.compiler.is_exporting'))
needs_unsafe_globals_check = pytest.mark.skipif(
    not hasattr(torch.serialization, 'get_unsafe_globals_in_checkpoint'),
    reason=_newer_than_this_torch('weights_only loading with get_unsafe_globals_in_checkpoint'))
needs_cpu_flash_attention = pytest.mark.skipif(
    not hasattr(torch.ops.aten, '_scaled_dot_product_flash_attention_for_cpu'),
    reason=_newer_than_this_torch("SDPA's fused CPU kernel"))


def randomize_(module, seed=0, scale=1.0):
    """Fill every parameter of ``module`` with seeded ``N(0, scale^2)`` noise and give every
    batch norm in it random running statistics (in place); returns ``module``.

    Paper inits are often zeros/ones, which hide bugs; tests randomise first. The running
    statistics matter in eval mode, where a batch norm with the default mean 0 and variance 1
    would only be its affine part: here mean ~ U(-0.5, 0.5) and variance ~ U(0.5, 2), drawn
    after the parameters (whose values do not depend on them).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 1.5 + 0.5)
    return module


def assert_grads_reach_every_parameter(module, x, loss_fn=None):
    """Backprop ``loss_fn(module(x))`` (default: sum of squares); every parameter and
    ``x`` (if it requires grad) get a finite, non-zero gradient."""
    out = module(x)
    loss = out.square().sum() if loss_fn is None else loss_fn(out)
    loss.backward()
    named = list(module.named_parameters())
    if x.requires_grad:
        named.append(('input', x))
    for name, p in named:
        if not p.requires_grad:
            continue
        assert p.grad is not None, f'{name} got no gradient'
        assert torch.isfinite(p.grad).all(), f'{name} has a non-finite gradient'
        assert p.grad.abs().sum() > 0, f'{name} has an all-zero gradient'
    return out


def build_plugin_in_scope(cfg, scope, in_channels, postfix='_1'):
    """Build a plugin the way mmdet/mmseg ResNet does, with ``scope`` as default scope."""
    with DefaultScope.overwrite_default_scope(scope):
        return build_plugin_layer(dict(cfg), postfix=postfix, in_channels=in_channels)


def build_model_in_scope(cfg, scope):
    """Build ``cfg`` (a dict, or a list of dicts for a chain) from ``scope``'s ``MODELS``
    (``'mmdet'`` or ``'mmseg'``, all its modules registered) with ``scope`` as the default
    scope.

    The scope is set for the build: pytest runs every file in one process, and an earlier test
    may leave another library's scope as the global default, under which ``MODELS.build``
    looks a type up in that library's registry instead.
    """
    registry = importlib.import_module(f'{scope}.registry').MODELS
    importlib.import_module(f'{scope}.utils').register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope(scope):
        return registry.build(cfg)


def mmdet_resnet(plugins=None, depth=50, **kwargs):
    """mmdet's ResNet with ``plugins`` (``dcn``, ``init_cfg`` etc. through ``kwargs``)."""
    return build_model_in_scope(dict(type='ResNet', depth=depth, plugins=plugins, **kwargs),
                                'mmdet')


def mmseg_resnet(plugins=None, depth=50, **kwargs):
    """mmseg's ResNetV1c with ``plugins`` (the DeepLab backbone)."""
    return build_model_in_scope(dict(type='ResNetV1c', depth=depth, plugins=plugins, **kwargs),
                                'mmseg')


def tiny_faster_rcnn(neck_after_fpn=None, channels=16, num_classes=3):
    """mmdet's Faster R-CNN R50-FPN model config, narrowed so a loss forward takes a fraction
    of a second on one CPU core.

    It is mmdet's own ``_base_/models/faster-rcnn_r50_fpn.py`` with ResNet-18 at 1/8 width
    (C2-C5 of 8, 16, 32, 64 channels) and no pretrained weights, a ``channels``-wide FPN
    (five levels, strides 4 to 64), RPN and RoI head (32-wide FCs), and ``num_classes``
    classes; anchors, assigners, samplers, test settings and the data preprocessor (which
    pads to a multiple of 32) are mmdet's. Build it with ``build_model_in_scope(cfg,
    'mmdet')``; feed it ``tiny_det_batch``.

    Args:
        neck_after_fpn (dict, optional): A neck chained after the FPN, ``neck=[FPN, it]``, as
            the FPN-then-ASFF/RFB/ASPP configs do. Its ``in_channels`` defaults to the FPN's
            outputs, ``[channels] * 5``. Defaults to None (FPN alone).
        channels (int): Width of the FPN, the RPN and the RoI features. Defaults to 16.
        num_classes (int): Object classes of the box head. Defaults to 3.

    Returns:
        ConfigDict: The ``model`` config, as ``Config.fromfile`` gives it (edit it freely).
    """
    import mmdet
    path = os.path.join(os.path.dirname(mmdet.__file__), '.mim', 'configs', '_base_',
                        'models', 'faster-rcnn_r50_fpn.py')
    cfg = Config.fromfile(path).model
    cfg.backbone.update(depth=18, base_channels=8, init_cfg=None)
    cfg.neck.update(in_channels=[8, 16, 32, 64], out_channels=channels)
    if neck_after_fpn is not None:
        cfg.neck = [cfg.neck, dict(dict(in_channels=[channels] * 5), **neck_after_fpn)]
    cfg.rpn_head.update(in_channels=channels, feat_channels=channels)
    cfg.roi_head.bbox_roi_extractor.out_channels = channels
    cfg.roi_head.bbox_head.update(in_channels=channels, fc_out_channels=32,
                                  num_classes=num_classes)
    return cfg


def tiny_det_batch(model, image_shapes=((64, 64), (64, 56)), num_classes=3, training=True):
    """A batch for ``model(**batch, mode=...)``: one random uint8 image per ``(H, W)`` in
    ``image_shapes`` with two or three random ground-truth boxes (mmdet's ``demo_mm_inputs``,
    seeded), put through ``model``'s data preprocessor (normalised, padded, ``pad_shape`` and
    ``batch_input_shape`` set)."""
    from mmdet.testing import demo_mm_inputs
    n = len(image_shapes)
    data = demo_mm_inputs(batch_size=n, image_shapes=[(3, h, w) for h, w in image_shapes],
                          num_items=[2 + i % 2 for i in range(n)], num_classes=num_classes)
    return model.data_preprocessor(data, training=training)


def tiny_encoder_decoder(neck=None, decode_in_channels=64, num_classes=3,
                         norm_cfg=dict(type='BN', requires_grad=True), **backbone):
    """An mmseg ``EncoderDecoder`` config: the DeepLab backbone (``ResNetV1c``, output
    stride 8 by dilating C4/C5) at 1/8 width, an optional ``neck``, and a one-conv 16-wide
    ``FCNHead`` on C5 (``in_index=3``). Build it with ``build_model_in_scope(cfg, 'mmseg')``;
    feed it ``tiny_seg_batch``.

    Args:
        neck (dict, optional): The neck between backbone and head. Defaults to None.
        decode_in_channels (int): Channels the head reads at level 3: C5's (64 for
            ResNet-18 at 1/8 width, 256 for ResNet-50) or the neck's. Defaults to 64.
        num_classes (int): Defaults to 3.
        norm_cfg (dict): Norm of the backbone and the head. Defaults to BN.
        **backbone: Overrides of the backbone config (``depth``, ``plugins`` ...); the depth
            defaults to 18.

    Returns:
        dict: The ``model`` config.
    """
    return dict(
        type='EncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[0.0] * 3, std=[1.0] * 3,
                               pad_val=0, seg_pad_val=255),
        backbone=dict(dict(type='ResNetV1c', depth=18, stem_channels=8, base_channels=8,
                           out_indices=(0, 1, 2, 3), strides=(1, 2, 1, 1),
                           dilations=(1, 1, 2, 4), norm_cfg=copy.deepcopy(norm_cfg)),
                      **backbone),
        neck=neck,
        decode_head=dict(type='FCNHead', in_channels=decode_in_channels, in_index=3,
                         channels=16, num_convs=1, concat_input=False,
                         num_classes=num_classes, norm_cfg=copy.deepcopy(norm_cfg),
                         loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0)),
        train_cfg=dict(), test_cfg=dict(mode='whole'))


def tiny_seg_batch(n=2, size=32, num_classes=3):
    """``(inputs, data_samples)`` for ``segmentor.loss``: ``n`` random ``size x size``
    images and ``SegDataSample``s with random ``gt_sem_seg`` labels in ``[0, num_classes)``."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    samples = []
    for _ in range(n):
        sample = SegDataSample(metainfo=dict(img_shape=(size, size), pad_shape=(size, size)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, size, size)))
        samples.append(sample)
    return torch.randn(n, 3, size, size), samples


def total_loss(losses):
    """The sum of every ``loss`` entry of a model's loss dict, tensors or lists of tensors
    (mmdet's RPN gives one per level); other entries (``acc``) are left out."""
    return sum(v.sum() if torch.is_tensor(v) else sum(x.sum() for x in v)
               for k, v in losses.items() if 'loss' in k)


#: An init_cfg like a real backbone's, that overwrites every conv and norm it reaches.
HOST_INIT_CFG = [
    dict(type='Kaiming', layer='Conv2d'),
    dict(type='Constant', val=0.5, layer=['_BatchNorm', 'GroupNorm']),
]


def assert_same(a, b, where='ckpt'):
    """Assert two nested checkpoints/state dicts are bit-identical: same keys, lengths,
    tensor dtypes and shapes, equal values; ``where`` names the first differing entry."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f'{where}[{k!r}]')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f'{where}[{i}]')
    else:
        assert a == b, where


def _layout(t):
    """'nchw' or 'nhwc' for a 4-D activation held in one of them; None for anything else."""
    if t.dim() != 4 or min(t.shape[1:]) < 2 or 0 in t.stride():
        return None
    if t.is_contiguous():
        return 'nchw'
    return 'nhwc' if t.is_contiguous(memory_format=torch.channels_last) else None


class MixedLayouts(TorchDispatchMode):
    """Records the ops that take NCHW and channels-last activations together: the CPU
    kernels then read one of them with a large stride (an add of two such tensors costs
    ~12x a plain one). A conv's weight and a grid sampler's grid are not activations: only
    their input counts."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        tensors = [a for a in tree_flatten((args, kwargs or {}))[0] if isinstance(a, torch.Tensor)]
        if func in (torch.ops.aten.convolution.default, torch.ops.aten.grid_sampler_2d.default):
            tensors = tensors[:1]
        if len({_layout(t) for t in tensors} - {None}) > 1:
            self.ops.add(str(func))
        return func(*args, **(kwargs or {}))
