"""Property-based tests (hypothesis) of the plugins and conv-layer replacements.

The property, for every module: whatever the constructor arguments (drawn from
wide strategies that include invalid values: 0, negatives, floats for ints,
bools, None, strings, wrong-length tuples, indivisible channel counts,
``rd_ratio`` out of range, malformed cfg dicts) and whatever the input (batch
1..3, spatial 1..17, odd and non-square, channels matching or not, wrong ndim,
integer dtype), the module either

(a) returns an output of the documented shape (plugins: the input's;
    convs: ``nn.Conv2d``'s formula; ``BlurPool2d``: ``ceil(H / stride)``) with
    finite values, or
(b) raises ``ValueError`` / ``TypeError`` whose message names the module and
    the bad argument (at construction) or the input (at forward).

Never an error from deep inside torch (``RuntimeError`` from a conv, a view or
a matmul, ``ZeroDivisionError``, ``IndexError``, an ``AssertionError``...).

Two exceptions, both clear and both checked precisely:

* BatchNorm in train mode with one value per channel (torch's own
  ``ValueError: Expected more than 1 value per channel when training``): with
  ``N = 1`` a BN after global pooling (SK's selection) or on a 1-pixel map
  (CBAM, StripPooling's strips, STN's localisation convs) sees one value per
  channel. It is allowed only for a module in train mode that holds a BN, and
  only at batch 1 (with ``N >= 2`` every BN sees at least two values).
* The same torch message from a ``norm_cfg=dict(type='GN', num_groups=1)``
  the test draws, on a group of a single value (one channel of a 1x1 map, in
  any mode): allowed only for a module that holds a GroupNorm.

An unregistered cfg ``type`` is an invalid argument like any other (mmcv's
own miss message, "Cannot find None in registry", names neither).

Arguments are drawn as ``(value, bad)`` pairs: a value from an argument's
invalid pool must make construction raise (so the check is not vacuous); a
combination of valid values may still be rejected (e.g. ``groups`` not
dividing ``in_channels``), but then with a message naming an argument.
Examples are derandomised (reproducible in CI) and the whole file runs in
well under a minute on one core (channels <= 32, maps <= 17x17).
"""
import inspect
import math
import os
import re

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mmcv.cnn import ConvModule  # noqa: F401  (registers mmcv's layers)
from torch import nn

from mmplug import BlurConv2d, BlurPool2d
from mmplug.conv.coord_conv import CoordConv2d
from mmplug.conv.dcn import DCNv2UnitMask
from mmplug.conv.ghost_conv import GhostConv2d
from mmplug.plugins.cbam import CBAM
from mmplug.plugins.coord_conv import CoordConvPlugin
from mmplug.plugins.non_local import NonLocal
from mmplug.plugins.se import SE
from mmplug.plugins.selective_kernel import SK
from mmplug.plugins.sge import SGE
from mmplug.plugins.stn import STN
from mmplug.plugins.strip_pooling import StripPooling

from _harness import randomize_

MAX_EXAMPLES = int(os.environ.get('MMPLUG_FUZZ_EXAMPLES', 120))

FUZZ = settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

BN_ONE_VALUE = 'Expected more than 1 value per channel when training'


# ---------------------------------------------------------------- argument pools


class Drawn(tuple):
    """``(value, bad)``; shown as ``value`` or ``BAD(value)`` in hypothesis' reports."""

    def __repr__(self):
        return f'BAD({self[0]!r})' if self[1] else repr(self[0])


def arg(valid, invalid=None):
    """An argument's pools: ``valid`` values and (optionally) clearly ``invalid`` ones."""
    return valid, invalid


def draw_args(data, args):
    """``{name: Drawn((value, bad))}``: all valid (4 in 7 examples), exactly one
    invalid (2 in 7) or each invalid with probability 1/4."""
    mode = data.draw(st.sampled_from(['valid', 'one bad', 'valid', 'one bad', 'valid',
                                      'several bad', 'valid']), label='mode')
    can_be_bad = [name for name, (_, invalid) in args.items() if invalid is not None]
    bad = set()
    if mode == 'one bad':
        bad = {data.draw(st.sampled_from(can_be_bad), label='bad argument')}
    elif mode == 'several bad':
        bad = {name for name in can_be_bad
               if data.draw(st.sampled_from([False, False, False, True]), label=name + ' bad')}
    drawn = {}
    for name, (valid, invalid) in args.items():
        is_bad = name in bad
        drawn[name] = Drawn((data.draw(invalid if is_bad else valid, label=name), is_bad))
    return drawn


_NOT_AN_INT = st.sampled_from([2.0, 3.5, True, False, None, '8', (4,), [4], float('nan')])
BAD_POS_INT = st.one_of(st.integers(-4, 0), _NOT_AN_INT)
BAD_NONNEG_INT = st.one_of(st.integers(-4, -1), _NOT_AN_INT)
BAD_PAIR = st.one_of(
    st.integers(-3, 0), st.sampled_from([(3,), (1, 2, 3), (0, 1), (1, -1), 1.5, True, None,
                                         'a', (2.0, 2), (True, 1), []]))
BAD_PADDING = st.one_of(
    st.integers(-3, -1), st.sampled_from([(1,), (1, 2, 3), (-1, 0), 1.5, None, True, 'a',
                                          (1.0, 1)]))
BAD_RD_CHANNELS = st.one_of(st.integers(-4, 0), _NOT_AN_INT.filter(lambda v: v is not None))
BAD_RATIO = st.sampled_from([0, 0.0, -0.5, 1.5, 2, True, None, '0.5', float('nan'),
                             float('inf'), (0.5,)])
BAD_BOOL = st.sampled_from([0, 1, None, 'True', 1.0])
BAD_CFG = st.sampled_from(['BN', 3, [], (), {}, {'norm': 'BN'}, {'type': 3},
                           {'type': None}, {'type': 'NoSuchLayer'}])

NORM_CFGS = st.sampled_from([None, dict(type='BN'), dict(type='BN', momentum=0.01),
                             dict(type='GN', num_groups=1)])
ACT_CFGS = st.sampled_from([None, dict(type='ReLU'), dict(type='Sigmoid'), dict(type='GELU')])
CONV_CFGS = st.sampled_from([None, dict(type='Conv2d'), dict(type='Conv')])

CH = st.integers(1, 16)
SMALL = st.integers(1, 4)
RATIO = st.one_of(st.sampled_from([1 / 16, 1 / 8, 0.25, 0.5, 1.0, 1]),
                  st.floats(0.01, 1.0))
RD_CHANNELS = st.one_of(st.none(), st.integers(1, 16))
RD_DIVISOR = st.integers(1, 8)
KERNEL = st.one_of(st.integers(1, 5), st.tuples(st.integers(1, 5), st.integers(1, 5)))
STRIDE = st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3)))
PADDING = st.one_of(st.integers(0, 3), st.tuples(st.integers(0, 3), st.integers(0, 3)))
DILATION = st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3)))
ODD_KERNEL = st.sampled_from([1, 3, 5, 7])
BAD_ODD_KERNEL = st.one_of(BAD_POS_INT, st.sampled_from([2, 4, 6, (3, 3)]))

# ---------------------------------------------------------------- input pools


@st.composite
def inputs(draw, channels):
    """``(x, bad)``: a well-formed ``[N, C, H, W]`` float input mostly; sometimes the
    wrong channel count, ndim or dtype (``bad`` then says so)."""
    n, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 17)), draw(st.integers(1, 17))
    kind = draw(st.sampled_from(['ok'] * 8 + ['channels', 'ndim3', 'ndim5', 'int']))
    valid = isinstance(channels, int) and not isinstance(channels, bool) and 1 <= channels <= 32
    c = channels if valid else 4
    shape, dtype = (n, c, h, w), draw(st.sampled_from([torch.float32] * 3 + [torch.float64]))
    if kind == 'channels':
        shape = (n, draw(st.integers(1, 31).map(lambda v: v + (v >= c))), h, w)
    elif kind == 'ndim3':
        shape = (c, h, w)
    elif kind == 'ndim5':
        shape = (n, c, h, w, 2)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    x = torch.randn(shape, generator=gen, dtype=dtype)
    if kind == 'int':
        x = (x * 4).to(torch.int64)
    return x, kind != 'ok'


# ---------------------------------------------------------------- the property


def _names(cls):
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ('self',)]


def _has_train_bn(module):
    return module.training and any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                   for m in module.modules())


def _has_group_norm(module):
    return any(isinstance(m, nn.GroupNorm) for m in module.modules())


def _conv_out(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def check_property(cls, drawn, x, x_bad, expected_shape, train, inner_owners=()):
    """The property of the module docstring for one draw.

    ``drawn``: ``{name: (value, bad)}``; ``expected_shape(module, x)``: the
    documented output shape of a well-formed input.
    """
    owner = cls.__name__
    owners = (owner, *inner_owners)
    kwargs = {name: value for name, (value, _) in drawn.items()}
    bad_args = [name for name, (_, bad) in drawn.items() if bad]
    if kwargs.get('rd_channels') is not None:  # documented: overrides rd_ratio/rd_divisor
        bad_args = [a for a in bad_args if a not in ('rd_ratio', 'rd_divisor')]
    names = _names(cls)
    try:
        module = cls(**kwargs)
    except (ValueError, TypeError) as e:
        msg = str(e)
        assert any(o in msg for o in owners), f'{owner}: message does not name it: {msg!r}'
        named = [n for n in names if re.search(rf'\b{n}\b', msg)]
        assert named, f'{owner}: message names no argument: {msg!r} ({kwargs})'
        return f'rejected {"an invalid value" if bad_args else "a valid but inconsistent set"}'

    assert not bad_args, f'{owner} accepted invalid {bad_args}: {kwargs}'
    randomize_(module, seed=0, scale=0.5)
    module.train(train)
    if x.dtype == torch.float64:
        module.double()  # a float64 input goes with float64 weights
    with torch.no_grad():
        try:
            out = module(x)
        except (ValueError, TypeError) as e:
            msg = str(e)
            if BN_ONE_VALUE in msg:
                assert not x_bad and (_has_train_bn(module) and x.shape[0] == 1
                                      or _has_group_norm(module)), \
                    f'{owner}: norm error outside train BN at batch 1 / GN: {tuple(x.shape)}'
                return 'norm on a single value'
            assert any(o in msg for o in owners), f'{owner}: message does not name it: {msg!r}'
            assert 'input' in msg, f'{owner}: message does not name the input: {msg!r}'
            return 'bad input' if x_bad else 'input too small'
    assert not x_bad, f'{owner} accepted a bad input {tuple(x.shape)} {x.dtype}'
    assert tuple(out.shape) == tuple(expected_shape(module, x)), \
        f'{owner}: {tuple(out.shape)} from {tuple(x.shape)} ({kwargs})'
    assert out.dtype == x.dtype
    assert torch.isfinite(out).all(), f'{owner}: non-finite output ({kwargs})'
    return 'ok'


def same_shape(module, x):
    return x.shape


def conv_shape(module, x):
    k, s, p, d = (module.kernel_size, module.stride, module.padding, module.dilation)
    if p == 'same':
        return (x.shape[0], module.out_channels, *x.shape[2:])
    if p == 'valid':
        p = (0, 0)
    return (x.shape[0], module.out_channels,
            *(_conv_out(x.shape[2 + i], k[i], s[i], p[i], d[i]) for i in range(2)))


def blur_pool_shape(module, x):
    return (*x.shape[:2], *(math.ceil(v / module.stride) for v in x.shape[2:]))


def run_property(cls, data, args, expected_shape, channels_of='in_channels', inner_owners=()):
    drawn = draw_args(data, args)
    x, x_bad = data.draw(inputs(drawn[channels_of][0]), label='x')
    train = data.draw(st.booleans(), label='train')
    outcome = check_property(cls, drawn, x, x_bad, expected_shape, train, inner_owners)
    # hypothesis' statistics (--hypothesis-show-statistics) list these per test
    event(outcome)


# ---------------------------------------------------------------- plugins

RD_ARGS = dict(rd_ratio=arg(RATIO, BAD_RATIO), rd_channels=arg(RD_CHANNELS, BAD_RD_CHANNELS),
               rd_divisor=arg(RD_DIVISOR, BAD_POS_INT))


@FUZZ
@given(st.data())
def test_fuzz_se(data):
    run_property(SE, data, dict(
        in_channels=arg(CH, BAD_POS_INT), **RD_ARGS, act_cfg=arg(ACT_CFGS, BAD_CFG),
        gate_cfg=arg(st.sampled_from([dict(type='Sigmoid'),
                                      dict(type='HSigmoid', bias=3.0, divisor=6.0)]),
                     st.one_of(st.none(), BAD_CFG))), same_shape)


@FUZZ
@given(st.data())
def test_fuzz_cbam(data):
    run_property(CBAM, data, dict(
        in_channels=arg(CH, BAD_POS_INT), **RD_ARGS,
        kernel_size=arg(ODD_KERNEL, BAD_ODD_KERNEL), act_cfg=arg(ACT_CFGS, BAD_CFG),
        norm_cfg=arg(NORM_CFGS, BAD_CFG), no_spatial=arg(st.booleans(), BAD_BOOL)), same_shape)


@FUZZ
@given(st.data())
def test_fuzz_sge(data):
    run_property(SGE, data, dict(
        in_channels=arg(st.sampled_from([1, 2, 4, 6, 8, 12, 16, 32]), BAD_POS_INT),
        groups=arg(st.sampled_from([1, 2, 3, 4, 8]), BAD_POS_INT),
        eps=arg(st.sampled_from([1e-5, 1e-3, 1]),
                st.sampled_from([0, 0.0, -1e-5, None, '1e-5', True]))), same_shape)


@FUZZ
@given(st.data())
def test_fuzz_sk(data):
    run_property(SK, data, dict(
        in_channels=arg(st.sampled_from([1, 2, 4, 6, 8, 12, 16]), BAD_POS_INT),
        dilations=arg(st.lists(st.integers(1, 3), min_size=2, max_size=3).map(tuple),
                      st.sampled_from([(1,), (), 2, (1, 0), (1, 2.0), (1, True), None,
                                       '12'])),
        groups=arg(st.sampled_from([1, 2, 3, 4]), BAD_POS_INT), **RD_ARGS,
        min_channels=arg(SMALL, BAD_POS_INT), conv_cfg=arg(CONV_CFGS, BAD_CFG),
        norm_cfg=arg(NORM_CFGS, BAD_CFG), act_cfg=arg(ACT_CFGS, BAD_CFG)), same_shape)


@FUZZ
@given(st.data())
def test_fuzz_non_local(data):
    run_property(NonLocal, data, dict(
        in_channels=arg(CH, BAD_POS_INT), **RD_ARGS, use_scale=arg(st.booleans(), BAD_BOOL),
        sub_sample=arg(st.booleans(), BAD_BOOL), conv_cfg=arg(CONV_CFGS, BAD_CFG),
        norm_cfg=arg(NORM_CFGS, BAD_CFG)), same_shape)


@FUZZ
@given(st.data())
def test_fuzz_stn(data):
    run_property(STN, data, dict(
        in_channels=arg(CH, BAD_POS_INT), **RD_ARGS, num_convs=arg(st.integers(1, 3), BAD_POS_INT),
        padding_mode=arg(st.sampled_from(['zeros', 'border']),
                         st.sampled_from(['reflection', None, 0, 'ZEROS'])),
        conv_cfg=arg(CONV_CFGS, BAD_CFG), norm_cfg=arg(NORM_CFGS, BAD_CFG),
        act_cfg=arg(ACT_CFGS, BAD_CFG)), same_shape)


@FUZZ
@given(st.data())
def test_fuzz_strip_pooling(data):
    run_property(StripPooling, data, dict(
        in_channels=arg(CH, BAD_POS_INT), **RD_ARGS,
        identity_init=arg(st.booleans(), BAD_BOOL), conv_cfg=arg(CONV_CFGS, BAD_CFG),
        norm_cfg=arg(NORM_CFGS, BAD_CFG), act_cfg=arg(ACT_CFGS, BAD_CFG)), same_shape)


@FUZZ
@given(st.data())
def test_fuzz_coord_conv_plugin(data):
    run_property(CoordConvPlugin, data, dict(
        in_channels=arg(CH, BAD_POS_INT), kernel_size=arg(ODD_KERNEL, BAD_ODD_KERNEL),
        with_r=arg(st.booleans(), BAD_BOOL), conv_cfg=arg(CONV_CFGS, BAD_CFG)), same_shape)


# ---------------------------------------------------------------- conv replacements

# Mostly divisible combinations, so most valid draws build (indivisible ones must raise).
GROUPED = st.sampled_from([1, 1, 1, 2, 2, 4, 3])
CONV_CH = st.sampled_from([4, 8, 12, 16, 6, 2, 1, 3])


def conv_args(**extra):
    return dict(in_channels=arg(CONV_CH, BAD_POS_INT), out_channels=arg(CONV_CH, BAD_POS_INT),
                kernel_size=arg(KERNEL, BAD_PAIR), stride=arg(STRIDE, BAD_PAIR),
                padding=arg(PADDING, BAD_PADDING), dilation=arg(DILATION, BAD_PAIR),
                groups=arg(GROUPED, BAD_POS_INT), bias=arg(st.booleans(), BAD_BOOL), **extra)


@FUZZ
@given(st.data())
def test_fuzz_coord_conv2d(data):
    args = conv_args(
        padding_mode=arg(st.sampled_from(['zeros', 'reflect', 'replicate', 'circular']),
                         st.sampled_from(['zero', None, 0, 'REFLECT'])),
        with_r=arg(st.booleans(), BAD_BOOL))
    args['padding'] = arg(st.one_of(PADDING, st.sampled_from(['same', 'valid'])),
                          st.one_of(BAD_PADDING, st.just('full')))
    run_property(CoordConv2d, data, args, conv_shape)


@FUZZ
@given(st.data())
def test_fuzz_ghost_conv2d(data):
    run_property(GhostConv2d, data, conv_args(
        ratio=arg(st.integers(2, 4), st.one_of(BAD_POS_INT, st.just(1))),
        dw_size=arg(st.sampled_from([1, 3, 5]), BAD_ODD_KERNEL),
        norm_cfg=arg(NORM_CFGS, BAD_CFG), act_cfg=arg(ACT_CFGS, BAD_CFG)), conv_shape)


@FUZZ
@given(st.data())
def test_fuzz_blur_conv2d(data):
    args = conv_args(
        padding_mode=arg(st.just('zeros'), st.sampled_from(['reflect', None, 0])),
        filt_size=arg(st.integers(1, 7), st.one_of(BAD_POS_INT, st.sampled_from([8, 9]))),
        pad_mode=arg(st.sampled_from(['reflect', 'replicate', 'zero', 'constant', 'circular']),
                     st.sampled_from(['zeros', None, 0, 'REFLECT'])),
        blur_first=arg(st.booleans(), BAD_BOOL))
    # BlurConv2d subsamples equally on both axes.
    args['stride'] = arg(st.integers(1, 3), st.one_of(BAD_PAIR, st.just((1, 2))))
    run_property(BlurConv2d, data, args, conv_shape, inner_owners=('BlurPool2d',))


@FUZZ
@given(st.data())
def test_fuzz_blur_pool2d(data):
    run_property(BlurPool2d, data, dict(
        in_channels=arg(CH, BAD_POS_INT),
        filt_size=arg(st.integers(1, 7), st.one_of(BAD_POS_INT, st.sampled_from([8, 9]))),
        stride=arg(st.integers(1, 3), BAD_POS_INT),
        pad_mode=arg(st.sampled_from(['reflect', 'replicate', 'zero', 'constant', 'circular']),
                     st.sampled_from(['zeros', None, 0, 'REFLECT']))), blur_pool_shape)


@FUZZ
@given(st.data())
def test_fuzz_dcnv2_unit_mask(data):
    run_property(DCNv2UnitMask, data, conv_args(
        deform_groups=arg(st.sampled_from([1, 1, 2, 4, 3]), BAD_POS_INT),
        impl=arg(st.sampled_from(['auto', 'torch']), st.sampled_from(['cuda', None, 0]))),
        conv_shape)


@pytest.mark.parametrize('cls', [SE, CBAM, SGE, SK, NonLocal, STN, StripPooling,
                                 CoordConvPlugin, CoordConv2d, GhostConv2d, BlurConv2d,
                                 BlurPool2d, DCNv2UnitMask])
def test_fuzz_covers_every_argument(cls):
    """The strategies above draw every constructor argument but ``init_cfg``, ``device``
    and ``dtype`` (so an argument added to a module must be added here)."""
    fuzzed = {
        SE: 'in_channels rd_ratio rd_channels rd_divisor act_cfg gate_cfg',
        CBAM: 'in_channels rd_ratio rd_channels rd_divisor kernel_size act_cfg norm_cfg '
              'no_spatial',
        SGE: 'in_channels groups eps',
        SK: 'in_channels dilations groups rd_ratio rd_channels rd_divisor min_channels '
            'conv_cfg norm_cfg act_cfg',
        NonLocal: 'in_channels rd_ratio rd_channels rd_divisor use_scale sub_sample conv_cfg '
                  'norm_cfg',
        STN: 'in_channels rd_ratio rd_channels rd_divisor num_convs padding_mode conv_cfg '
             'norm_cfg act_cfg',
        StripPooling: 'in_channels rd_ratio rd_channels rd_divisor identity_init conv_cfg '
                      'norm_cfg act_cfg',
        CoordConvPlugin: 'in_channels kernel_size with_r conv_cfg',
    }
    conv = 'in_channels out_channels kernel_size stride padding dilation groups bias'
    fuzzed.update({
        CoordConv2d: conv + ' padding_mode with_r',
        GhostConv2d: conv + ' ratio dw_size norm_cfg act_cfg',
        BlurConv2d: conv + ' padding_mode filt_size pad_mode blur_first',
        BlurPool2d: 'in_channels filt_size stride pad_mode',
        DCNv2UnitMask: conv + ' deform_groups impl',
    })
    expected = set(_names(cls)) - {'init_cfg', 'device', 'dtype'}
    assert set(fuzzed[cls].split()) == expected
