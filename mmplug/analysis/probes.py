"""Probes: what one module instance of a model computes on one forward, read through hooks.

A probe per supported module type (``probe_classes``). Before the forward, ``attach``
registers hooks on the module (a forward pre-hook records its input) and, where a probe
needs them, on its submodules (forward hooks record their outputs); the hooks return
nothing, so no module runs differently, and ``detach_hooks`` removes them before anything
is recomputed. ``compute`` then reads the module's own public methods on the recorded
input, so a figure shows what the module multiplies its input by, never a re-derivation
of its formula:

* ``SE``: ``channel_gate(x)``; ``CBAM``: ``gates(x)`` (channel, spatial or None);
  ``SGE``: ``gate(x)``; ``StripPooling``: ``gate(x)`` and the outputs of its strip convs
  ``conv_h``/``conv_w``; ``STN``: ``theta(x)``; ``NonLocal``: ``attention(x, query)``
  on the key grid its ``pool`` outputs; ``DCNv2UnitMask``: ``offsets_and_mask(x)``;
  ``ASFF``: ``fusion_weights(inputs)``.
* ``MPMBlock`` has no gate and no such method: the outputs of its ``short_range``,
  ``long_range`` and ``expand`` submodules.
* mmcv's deformable convs (not ours): the ``conv_offset`` output of the packs, split as
  mmcv's ``ModulatedDeformConv2dPack`` does (``sigmoid`` mask), or the offset and mask
  passed to the plain ``DeformConv2d`` / ``ModulatedDeformConv2d``.

``find_probes(model)`` gives the probes of a model; ``mmplug.analysis.figures`` draws
them and ``mmplug.analysis.visualize.run`` does both for a config.
"""
import fnmatch
import math

import torch

__all__ = ['Probe', 'VisualizeError', 'find_probes', 'probe_classes']


class VisualizeError(RuntimeError):
    """A problem of the inputs; the message says how to fix it."""


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


def _like_module(module, x):
    """``x`` (a CPU float32 record) on ``module``'s device, in its parameters' dtype."""
    p = next(module.parameters(), None)
    return x if p is None else x.to(device=p.device, dtype=p.dtype)


def _stats(label, t):
    t = torch.as_tensor(t).float()
    return (f'{label} mean {t.mean().item():.3g} (min {t.min().item():.3g}, '
            f'max {t.max().item():.3g})')


class Probe:
    """Hooks on one module instance and its submodules, and what they recorded.

    Subclasses name the submodule outputs they need (``outputs``: key ->
    submodule path, '' the module itself) and inputs (``inputs``), and compute
    ``result`` (arrays for the figure) and ``summary`` (one line of numbers) in
    ``compute``.

    Args:
        name (str): The module's path in the model.
        module (nn.Module): The module instance.
    """

    kind = ''
    outputs = {}
    inputs = {'x': ''}

    def __init__(self, name, module):
        self.name, self.module, self.store, self.handles = name, module, {}, []
        self.result, self.summary = None, ''

    def attach(self):
        """Register the hooks (before the forward)."""
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
        """Remove the hooks (after the forward, before ``compute``)."""
        for handle in self.handles:
            handle.remove()
        self.handles = []

    @property
    def ran(self):
        """Whether every hook fired: the module ran in the forward."""
        return all(k in self.store for k in (*self.outputs, *self.inputs))

    def feature_hw(self):
        """``(H, W)`` of the module's recorded input."""
        return tuple(self.store['x'][0].shape[-2:])

    def first_image(self):
        """The recorded input of the first image, ``[1, C, H, W]``, as the module takes it."""
        return _like_module(self.module, self.store['x'][0][:1])

    def call(self, method, *args):
        """``method(*args)`` under ``no_grad``; its tensors as CPU float32 copies."""
        with torch.no_grad():
            return _detach(method(*args))

    def compute(self, ctx):
        """Fill ``result`` and ``summary`` (``ctx``: a ``drawing.Context``)."""
        raise NotImplementedError


class SEProbe(Probe):
    kind = 'SE'

    def compute(self, ctx):
        gate = self.call(self.module.channel_gate, self.first_image())[0].flatten()  # [C]
        self.result = dict(channel=gate.numpy())
        self.summary = _stats('channel gate', gate)


class CBAMProbe(Probe):
    kind = 'CBAM'

    def compute(self, ctx):
        channel, spatial = self.call(self.module.gates, self.first_image())
        channel = channel[0].flatten()  # [C]
        self.result = dict(channel=channel.numpy(), spatial=None)
        self.summary = _stats('channel gate', channel)
        if spatial is not None:  # None with no_spatial
            spatial = spatial[0, 0]  # [H, W]
            self.result['spatial'] = spatial.numpy()
            self.summary += '; ' + _stats('spatial gate', spatial)


class SGEProbe(Probe):
    kind = 'SGE'

    def compute(self, ctx):
        gate = self.call(self.module.gate, self.first_image())[0]  # [G, H, W]
        self.result = dict(groups=gate.numpy())
        self.summary = _stats(f'gates of {self.module.groups} groups', gate)


class StripPoolingProbe(Probe):
    kind = 'StripPooling'
    outputs = {'strip_h': 'conv_h', 'strip_w': 'conv_w'}

    def compute(self, ctx):
        gate = self.call(self.module.gate, self.first_image())[0]  # [C, H, W]
        self.result = dict(gate=gate.mean(0).numpy(), gate_full=gate.numpy(),
                           strip_h=self.store['strip_h'][0].mean(0)[:, 0].numpy(),  # [H]
                           strip_w=self.store['strip_w'][0].mean(0)[0].numpy())  # [W]
        self.summary = _stats('gate', gate)


class MPMBlockProbe(Probe):
    kind = 'MPMBlock'
    outputs = {'short': 'short_range', 'long': 'long_range', 'residual': 'expand'}

    def compute(self, ctx):
        self.result = {k: self.store[k][0].mean(0).numpy() for k in self.outputs}
        self.summary = _stats('residual (channel mean)', torch.from_numpy(self.result['residual']))


class STNProbe(Probe):
    kind = 'STN'

    def compute(self, ctx):
        theta = self.call(self.module.theta, self.first_image())[0]  # [2, 3], A_theta
        self.result = dict(theta=theta.numpy())
        identity = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
        self.summary = (f'theta = [{", ".join(f"{v:.3f}" for v in theta.flatten().tolist())}], '
                        f'max |theta - I| = {(theta - identity).abs().max().item():.3g}')


class NonLocalProbe(Probe):
    kind = 'NonLocal'
    outputs = {'keys': 'pool'}  # the key grid (pooled with sub_sample)

    def compute(self, ctx):
        x = self.first_image()
        h, w = x.shape[-2:]
        qy, qx = ctx.feature_index(ctx.query, (h, w))
        keys_hw = tuple(self.store['keys'].shape[-2:])
        attn = self.call(self.module.attention, x, qy * w + qx)[0, 0].view(keys_hw)
        entropy = -(attn * attn.clamp_min(1e-30).log()).sum()
        self.result = dict(attn=attn.numpy(), q=(qy, qx), keys_hw=keys_hw)
        self.summary = (f'query feature cell ({qy}, {qx}) of {h}x{w}; max weight '
                        f'{attn.max().item():.3g} (uniform {1 / attn.numel():.3g}), entropy '
                        f'{entropy.item():.3g} of {math.log(attn.numel()):.3g} nats')


class DeformProbe(Probe):
    """mmcv deformable convs: the ``*Pack`` layers (offsets from ``conv_offset``) and the
    plain ones (offset and mask passed to ``forward``)."""

    kind = 'DCN'

    def __init__(self, name, module):
        super().__init__(name, module)
        self.packed = hasattr(module, 'conv_offset')
        self.outputs = {'offset_out': 'conv_offset'} if self.packed else {}
        self.kind = type(module).__name__

    def offset_mask(self):
        """``offset`` [2*G*K, Ho, Wo] (mmcv's (dy, dx) per tap), ``mask`` [G*K, Ho, Wo],
        the mask's name and its largest value."""
        from mmcv.ops import ModulatedDeformConv2d
        modulated = isinstance(self.module, ModulatedDeformConv2d)
        if not self.packed:
            args = self.store['x']
            offset = args[1][0]
            mask = args[2][0] if modulated else torch.ones_like(offset[::2])
            return offset, mask, 'mask' if modulated else 'none (DCNv1)', 1.0
        out = self.store['offset_out'][0]
        if not modulated:
            return out, torch.ones_like(out[::2]), 'none (DCNv1)', 1.0
        # mmcv's ModulatedDeformConv2dPack.forward: offsets, then the mask logits
        o1, o2, logit = torch.chunk(out, 3, dim=0)
        return torch.cat((o1, o2)), torch.sigmoid(logit), 'sigmoid mask', 1.0

    def compute(self, ctx):
        m = self.module
        offset, mask, mask_name, mask_max = self.offset_mask()
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
                           mask_max=mask_max)
        self.summary = (f'{kh}x{kw}, stride {sh}, {off.shape[0]} deform group(s); mean offset '
                        f'{length.mean().item():.3g} px of its input (max '
                        f'{length.max().item():.3g}); {_stats(mask_name, mask)}')


class DCNv2UnitMaskProbe(DeformProbe):
    """Ours: ``offsets_and_mask(x)`` (mask ``2 * sigmoid``, in ``[0, 2]``)."""

    def __init__(self, name, module):
        super().__init__(name, module)
        self.outputs = {}  # the module's own method replaces the conv_offset hook

    def offset_mask(self):
        offset, mask = self.call(self.module.offsets_and_mask, self.first_image())
        return offset[0], mask[0], '2*sigmoid mask', 2.0


class ASFFProbe(Probe):
    kind = 'ASFF'

    def compute(self, ctx):
        m = self.module
        levels = [_like_module(m, x[:1]) for x in self.store['x'][0]]  # the tuple of levels
        weights = self.call(m.fusion_weights, levels)  # tuple of [1, L, H_l, W_l]
        self.result = dict(weights=[w[0].numpy() for w in weights], strides=list(m.strides))
        self.summary = '; '.join(
            f'out {level}: mean weights ' + ' '.join(f'{v:.2f}' for v in w[0].mean((1, 2)))
            for level, w in enumerate(weights))


def probe_classes():
    """(class, probe) pairs in isinstance order: subclasses before their bases."""
    from mmcv.ops import DeformConv2d, ModulatedDeformConv2d

    from mmplug.conv.dcn import DCNv2UnitMask
    from mmplug.necks.asff import ASFF
    from mmplug.necks.mixed_pooling import MPMBlock
    from mmplug.plugins import CBAM, SE, SGE, STN, NonLocal, StripPooling
    return [(SE, SEProbe), (CBAM, CBAMProbe), (SGE, SGEProbe), (StripPooling, StripPoolingProbe),
            (MPMBlock, MPMBlockProbe), (STN, STNProbe), (NonLocal, NonLocalProbe),
            (DCNv2UnitMask, DCNv2UnitMaskProbe), (ModulatedDeformConv2d, DeformProbe),
            (DeformConv2d, DeformProbe), (ASFF, ASFFProbe)]


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
