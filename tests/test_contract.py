"""The contract every mmplug module meets, parametrised over :data:`_module_zoo.ZOO`.

* Registry: ``dict(type=...)`` builds our class from mmdet's and mmseg's scope, directly and
  the way a host builds it (a ResNet's plugin, mmcv's ``build_conv_layer``).
* Plugins inside mmdet's ``ResNet`` and mmseg's ``ResNetV1c`` keep the shapes and train
  (forward and backward reach every plugin parameter).
* The forward keeps PyTorch's default NCHW layout: it returns contiguous tensors and no op
  mixes NCHW with channels-last activations (a slow path on the CPU). A model converted to
  channels-last gets channels-last outputs, again with no op mixing the two.
* A plugin given a wrong input (not a tensor, not 4-D, other channels, integers) raises an
  error that names the plugin and what was wrong.
* Two plugins at one position are both applied, in order (an old mmdet bug applied only the
  last one; mmseg 1.2.2 still does, see the test at the end).
* The module's own init survives its host's ``init_cfg``.
* Invalid arguments raise a ``ValueError`` (``TypeError`` for an unknown argument) whose
  message names the argument and the value.

What each module needs for this (its arguments, position in a ResNet, init, invalid
arguments) is in its ``ZooEntry``. The hosts are ResNet-50s at 1/8 of the width.
"""
import copy
import importlib

import pytest
import torch
from mmcv.cnn import build_conv_layer
from mmengine.model import BaseModule, Sequential
from mmengine.registry import DefaultScope

import mmplug  # noqa: F401  (registers every module)

from _harness import (
    HOST_INIT_CFG,
    MixedLayouts,
    build_model_in_scope,
    build_plugin_in_scope,
    mmdet_resnet,
    mmseg_resnet,
    randomize_,
)
from _module_zoo import ZOO, make, run

SCOPES = ['mmdet', 'mmseg']
HOSTS = {'mmdet': mmdet_resnet, 'mmseg': mmseg_resnet}
#: ResNet-50 at 1/8 of the width: c2-c5 of 32, 64, 128, 256 channels.
NARROW = dict(stem_channels=8, base_channels=8)
BLOCKS = (3, 4, 6, 3)  # ResNet-50's bottlenecks per stage
PLUGINS = [name for name, entry in ZOO.items() if entry.kind == 'plugin']


def _shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _plugin_cfg(entry, **cfg):
    """The entry's config as a ResNet's ``plugins=[dict(cfg=...)]`` takes it: the host sets
    ``in_channels``."""
    cfg = copy.deepcopy(dict(entry.cfg, **cfg))
    del cfg['in_channels']
    return dict(type=entry.name, **cfg)


def _in_channels(position, stage):
    """What a ResNet-50 bottleneck at ``NARROW`` width gives a plugin at ``position``."""
    planes = NARROW['base_channels'] * 2 ** stage
    return planes * 4 if position == 'after_conv3' else planes


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize('scope', SCOPES)
@pytest.mark.parametrize('name', list(ZOO))
def test_registry_builds_our_class(name, scope):
    entry = ZOO[name]
    module = build_model_in_scope(dict(type=name, **copy.deepcopy(entry.cfg)), scope)
    assert type(module) is entry.cls
    assert importlib.import_module(f'{scope}.registry').MODELS.get(name) is entry.cls
    assert _shapes(module) == _shapes(entry.build())  # every argument reached it
    if entry.kind == 'plugin':  # as mmdet's and mmseg's ResNet build their plugins
        layer_name, layer = build_plugin_in_scope(_plugin_cfg(entry), scope,
                                                  in_channels=entry.cfg['in_channels'])
        assert type(layer) is entry.cls and layer_name == f'{entry.abbr}_1'
        assert _shapes(layer) == _shapes(entry.build())
    if entry.position in ('conv_cfg', 'dcn'):  # as ConvModule and ResNet build their convs
        with DefaultScope.overwrite_default_scope(scope):
            layer = build_conv_layer(dict(type=name), **copy.deepcopy(entry.cfg))
        assert type(layer) is entry.cls and _shapes(layer) == _shapes(entry.build())


# --------------------------------------------------------------------------- host backbones


@pytest.mark.parametrize('scope', SCOPES)
@pytest.mark.parametrize('name', PLUGINS)
def test_plugin_in_resnet_keeps_shapes_and_trains(name, scope):
    entry = ZOO[name]
    plugins = [dict(cfg=_plugin_cfg(entry), stages=(False, True, True, True),
                    position=entry.position)]
    model = HOSTS[scope](plugins, out_indices=(0, 1, 2, 3), **NARROW)
    plain = HOSTS[scope](None, out_indices=(0, 1, 2, 3), **NARROW)
    found = {n: m for n, m in model.named_modules() if isinstance(m, entry.cls)}
    expected = {f'layer{s + 1}.{i}.{entry.abbr}': _in_channels(entry.position, s)
                for s in (1, 2, 3) for i in range(BLOCKS[s])}
    assert {n: m.in_channels for n, m in found.items()} == expected
    calls = []
    for seed, (n, m) in enumerate(found.items()):
        randomize_(m, seed=seed, scale=0.1)  # no identity at init: gradients flow
        m.register_forward_hook(
            lambda mod, args, out, n=n: calls.append((n, args[0].shape, out.shape)))
    model.train()
    plain.train()
    x = torch.randn(2, 3, 64, 48)
    outs = model(x)
    assert [o.shape for o in outs] == [o.shape for o in plain(x)]
    assert sorted(n for n, _, _ in calls) == sorted(expected)  # each applied once
    assert all(shape_in == shape_out for _, shape_in, shape_out in calls)
    sum(o.square().mean() for o in outs).backward()
    reached = set()
    for n, m in found.items():
        for pname, p in m.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), f'{n}.{pname}'
            if p.grad.abs().sum() > 0:
                reached.add(pname)
    # In one block or another: at these widths a ReLU may be dead for all inputs in one.
    assert reached == {pname for pname, _ in entry.build().named_parameters()}


@pytest.mark.parametrize('name', PLUGINS)
def test_plugin_output_may_be_modified_in_place(name):
    # mmdet's and mmseg's Bottleneck add the identity in place onto what the plugin after
    # conv3 returns (`out += identity`); backward must not need that output unchanged.
    module = randomize_(ZOO[name].build(), scale=0.1)
    x = ZOO[name].inputs(2, 6, 5)[0].requires_grad_()
    out = module(x)
    out += 1.0
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize('name', list(ZOO))
def test_forward_keeps_the_nchw_layout(name):
    # A channels-last view inside a module (e.g. a transposed [N, HW, C] reshaped back to
    # [N, C, H, W]) carries through a conv and meets an NCHW tensor in an elementwise op.
    module, inputs = make(name, n=2, h=12, w=10)
    with MixedLayouts() as mixed:
        outs = run(name, module, inputs)
    assert not mixed.ops, f'{name} mixes NCHW and channels-last in {sorted(mixed.ops)}'
    assert all(o.is_contiguous() for o in outs)


@pytest.mark.parametrize('name', list(ZOO))
def test_channels_last_model_stays_channels_last(name):
    # model.to(memory_format=torch.channels_last): an NCHW output would meet the
    # channels-last identity in the host block's residual add.
    module, inputs = make(name, n=2, h=12, w=10)
    module.to(memory_format=torch.channels_last)
    inputs = tuple(x.contiguous(memory_format=torch.channels_last) for x in inputs)
    with MixedLayouts() as mixed:
        outs = run(name, module, inputs)
    assert not mixed.ops, f'{name} mixes NCHW and channels-last in {sorted(mixed.ops)}'
    layouts = [o.is_contiguous(memory_format=torch.channels_last) and not o.is_contiguous()
               for o in outs]
    assert all(layouts), f'{name} returned NCHW outputs: {layouts}'


@pytest.mark.parametrize('name', PLUGINS)
def test_plugin_wrong_input_is_named(name):
    module = ZOO[name].build()
    c = module.in_channels
    cases = [((torch.randn(2, c, 6, 6), ), TypeError, 'tensor, got tuple'),
             (torch.randn(c, 6, 6), ValueError, f'got input shape ({c}, 6, 6)'),
             (torch.randn(2, c + 1, 6, 6), ValueError, f'expected {c} input channels, got {c + 1}'),
             (torch.ones(2, c, 6, 6, dtype=torch.long), TypeError, 'input dtype torch.int64')]
    for x, error, words in cases:
        with pytest.raises(error) as info:
            module(x)
        assert str(info.value).startswith(f'{name}: ') and words in str(info.value)


def _two_plugins(scope, entry):
    """Two of ``entry`` at its position in the first block of c5: the block, and the
    ``(postfix, input, output)`` of each call of them, in call order."""
    plugins = [dict(cfg=_plugin_cfg(entry, postfix=postfix), stages=(False, False, False, True),
                    position=entry.position) for postfix in ('_a', '_b')]
    model = HOSTS[scope](plugins, **NARROW)
    model.eval()
    block = model.layer4[0]
    calls = []
    for seed, postfix in enumerate(('a', 'b')):
        plugin = getattr(block, f'{entry.abbr}_{postfix}')
        randomize_(plugin, seed=seed, scale=0.1)  # neither is the identity
        plugin.register_forward_hook(
            lambda mod, args, out, p=postfix: calls.append((p, args[0], out)))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 48))
    return block, calls


@pytest.mark.parametrize('name', PLUGINS)
def test_two_plugins_at_one_position_are_both_applied(name):
    entry = ZOO[name]
    block, calls = _two_plugins('mmdet', entry)
    names = getattr(block, f'{entry.position}_plugin_names')
    assert names == [f'{entry.abbr}_a', f'{entry.abbr}_b']
    assert [p for p, _, _ in calls] == ['a', 'b']
    (_, a_in, a_out), (_, b_in, _) = calls
    assert not torch.equal(a_out, a_in)  # else chaining and not chaining look the same
    assert torch.equal(b_in, a_out), 'the second plugin does not get the output of the first'


def test_mmseg_resnet_applies_only_the_last_plugin_at_a_position():
    # mmseg 1.2.2's Bottleneck.forward_plugin calls every plugin at a position on the block's
    # features and keeps the last result: in mmseg's ResNet two plugins at one position do
    # not chain (mmdet's do). When an mmseg release fixes it, this fails: then check mmseg's
    # ResNet in the test above too.
    block, calls = _two_plugins('mmseg', ZOO['SE'])
    assert block.after_conv3_plugin_names == ['se_a', 'se_b']
    (_, a_in, a_out), (_, b_in, _) = calls
    assert not torch.equal(a_out, a_in) and torch.equal(b_in, a_in)


# --------------------------------------------------------------------------- init


INIT_CASES = [pytest.param(name, i, id=f'{name}-{i}')
              for name, entry in ZOO.items() for i in range(len(entry.inits))]
#: The cases where the module re-applies an init of its own (not GhostConv2d's and
#: BlurConv2d's, whose init is the host's).
OWN_INIT_CASES = [pytest.param(name, i, id=f'{name}-{i}') for name, entry in ZOO.items()
                  for i, case in enumerate(entry.inits) if case.own]


def _reached(module, cls):
    """The ``cls`` instances under ``module`` whose ``init_weights`` mmengine's
    ``BaseModule.init_weights`` calls: children of ``BaseModule``s down from ``module``
    (mmengine does not look inside a plain ``nn.Sequential``, e.g. ResNet's downsample)."""
    found = []
    for child in module.children():
        if isinstance(child, cls):
            found.append(child)
        elif isinstance(child, BaseModule):
            found += _reached(child, cls)
    return found


def _init_host(entry, case):
    """``(host, host_norm, instances)``: the module in a host with ``HOST_INIT_CFG`` (a
    ResNet for a plugin or a conv, else after another module as in a ``neck=[...]`` chain),
    a norm of the host's own, and the instances the host's ``init_weights`` reaches."""
    if entry.kind == 'plugin':
        plugins = [dict(cfg=_plugin_cfg(entry, **case.cfg), stages=(False, False, False, True),
                        position=entry.position)]
        host = mmdet_resnet(plugins, init_cfg=HOST_INIT_CFG, **NARROW)
    elif entry.position == 'conv_cfg':
        host = mmdet_resnet(depth=18, conv_cfg=dict(type=entry.name, **case.cfg),
                            init_cfg=HOST_INIT_CFG, **NARROW)
    elif entry.position == 'dcn':
        host = mmdet_resnet(dcn=dict(type=entry.name, fallback_on_stride=False, **case.cfg),
                            stage_with_dcn=(False, False, False, True), init_cfg=HOST_INIT_CFG,
                            **NARROW)
    else:
        host = Sequential(torch.nn.BatchNorm2d(4), entry.build(**case.cfg),
                          init_cfg=HOST_INIT_CFG)
    norm = host[0] if isinstance(host, Sequential) else host.norm1
    found = [host[1]] if isinstance(host, Sequential) else _reached(host, entry.cls)
    assert found
    for seed, m in enumerate(found):
        randomize_(m, seed=seed, scale=3.0)
    return host, norm, found


@pytest.mark.parametrize('name, i', INIT_CASES)
def test_own_init_survives_the_hosts_init_cfg(name, i):
    case = ZOO[name].inits[i]
    host, norm, found = _init_host(ZOO[name], case)
    host.init_weights()
    assert torch.all(norm.weight == 0.5)  # the host's init did run
    for m in found:
        case.check(m)


@pytest.mark.parametrize('name, i', INIT_CASES)
def test_init_check_rejects_random_weights(name, i):
    case = ZOO[name].inits[i]
    _, _, found = _init_host(ZOO[name], case)
    for m in found:
        with pytest.raises(AssertionError):
            case.check(m)


@pytest.mark.parametrize('name, i', OWN_INIT_CASES)
def test_init_check_rejects_the_hosts_init(name, i, monkeypatch):
    """Without the module's init (every ``init_weights`` in it, mmplug's and mmcv's, made
    mmengine's default, which only recurses) the host's init stays, and the check must
    tell."""
    case = ZOO[name].inits[i]
    host, norm, found = _init_host(ZOO[name], case)
    for cls in {type(m) for f in found for m in f.modules()}:
        if getattr(cls, 'init_weights', BaseModule.init_weights) is not BaseModule.init_weights:
            default = BaseModule.init_weights if issubclass(cls, BaseModule) else (
                lambda self: None)
            monkeypatch.setattr(cls, 'init_weights', default)
    host.init_weights()
    assert torch.all(norm.weight == 0.5)
    for m in found:
        with pytest.raises(AssertionError):
            case.check(m)


def test_every_module_is_in_the_zoo_with_its_contract():
    from mmplug.registry import MODELS
    # The layer library's modules: not the training runtime's (mmplug.engine registers
    # CPUSyncBN once imported).
    ours = {n for n, c in MODELS.module_dict.items()
            if c.__module__.startswith('mmplug.') and not c.__module__.startswith('mmplug.engine')}
    # A backbone wrapper and the neck that wraps any registered block (RFB, ASPP and MPM
    # are it with their block): no module of their own to build from a zoo entry.
    assert ours - {'PluggedBackbone', 'PerLevelNeck'} == set(ZOO)
    for name, entry in ZOO.items():
        assert entry.invalid, f'{name}: no invalid-argument cases'
        has_params = any(True for _ in entry.build().parameters())
        assert bool(entry.inits) == has_params, f'{name}: init cases'
        if entry.kind == 'plugin':
            assert entry.position in ('after_conv1', 'after_conv2', 'after_conv3'), name
            assert entry.abbr == entry.cls._abbr_, name


# --------------------------------------------------------------------------- arguments


INVALID = [pytest.param(name, case, id=f'{name}-{i}')
           for name, entry in ZOO.items() for i, case in enumerate(entry.invalid)]


@pytest.mark.parametrize('name, case', INVALID)
def test_invalid_arguments_are_named(name, case):
    kwargs, words, *error = case
    with pytest.raises(error[0] if error else ValueError) as err:
        ZOO[name].cls(**kwargs)
    msg = str(err.value)
    # Whose argument it is: the module's, or for a neck its block's.
    assert msg.startswith(f'{name}:') or msg.startswith(f'{name}Block:'), msg
    for word in words:
        assert word in msg, (word, msg)
