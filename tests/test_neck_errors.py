"""Errors of the necks (ASFF, RFB, ASPP, MPM) and their blocks: wrong constructor arguments
and wrong inputs raise ValueError/TypeError from the neck that name the argument or level and
the expected value, never an error from inside torch."""
import math

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mmplug.necks.asff import ASFF
from mmplug.necks.aspp import ASPP, ASPPBlock
from mmplug.necks.mixed_pooling import MPM, MPMBlock
from mmplug.necks.rfb import RFB, RFBBlock

# Tiny blocks: the properties are about arguments and shapes, not capacity.
SMALL = {
    'RFB': dict(rd_channels=2),
    'ASPP': dict(channels=4, dilations=(1, 2)),
    'MPM': dict(rd_channels=2, pool_sizes=(2, 3)),
}
PER_LEVEL = {'RFB': RFB, 'ASPP': ASPP, 'MPM': MPM}
BLOCKS = {'RFBBlock': (RFBBlock, SMALL['RFB']), 'ASPPBlock': (ASPPBlock, SMALL['ASPP']),
          'MPMBlock': (MPMBlock, SMALL['MPM'])}
PROPERTY = settings(deadline=None, derandomize=True, max_examples=100,
                    suppress_health_check=[HealthCheck.too_slow])


def _build(name, **kwargs):
    if name == 'ASFF':
        return ASFF(compress_channels=2, **kwargs).eval()
    return PER_LEVEL[name](**kwargs, **SMALL[name]).eval()


def _maps(channels, size=5, batch=1):
    return tuple(torch.randn(batch, c, size, size) for c in channels)


# ---------------------------------------------------------------- constructor arguments

@pytest.mark.parametrize('name', ['ASFF', 'RFB', 'ASPP', 'MPM'])
@pytest.mark.parametrize('kwargs, match', [
    (dict(in_channels=[]), r'in_channels must be a non-empty list of ints \(one per input level\)'),
    (dict(in_channels=8), r'in_channels must be a non-empty list'),
    (dict(in_channels=[8, 0]), r'in_channels\[1\] must be a positive int, got 0'),
    (dict(in_channels=[8, True]), r'in_channels\[1\] must be a positive int, got True'),
    (dict(in_channels=[8, 4], out_channels=[8, 4, 2]),
     r'out_channels must be None, an int or a list of 2 ints \(one per level\), got \[8, 4, 2\]'),
    (dict(in_channels=[8, 4], out_channels=[8]),
     r'out_channels must be None, an int or a list of 2 ints'),
    (dict(in_channels=[8, 4], out_channels=[8, 0]), r'out_channels\[1\] must be a positive int'),
    (dict(in_channels=[8, 4], out_channels=-1), r'out_channels must be a positive int, got -1'),
])
def test_channel_arguments(name, kwargs, match):
    with pytest.raises(ValueError, match=f'^{name}: {match}'):
        _build(name, **kwargs)


@pytest.mark.parametrize('strides, match', [
    ([8, 16], r'strides must be a list of 3 ints \(the feature stride of each input level\)'),
    ([8, 16, 32, 64], r'strides must be a list of 3 ints'),
    (8, r'strides must be a list of 3 ints'),
    ([8, 0, 32], r'strides\[1\] must be a positive int, got 0'),
    ([8, 12, 32], r'the strides of any two levels must differ by a power of 2, got '
               r'strides=\[8, 12, 32\] \(strides\[1\] = 12 is not a power-of-2 multiple of 8\)'),
])
def test_asff_strides(strides, match):
    with pytest.raises(ValueError, match=f'^ASFF: {match}'):
        ASFF(in_channels=[8, 4, 2], strides=strides)


def test_asff_needs_two_levels():
    with pytest.raises(ValueError, match=r'^ASFF: .*at least 2 levels, got \[8\]'):
        ASFF(in_channels=[8])


@pytest.mark.parametrize('name', ['RFB', 'ASPP', 'MPM'])
@pytest.mark.parametrize('levels', [[3], [-1], [0, 0], [], 1, [True], [0.0]])
def test_levels_out_of_range(name, levels):
    with pytest.raises(ValueError,
                       match=rf'^{name}: levels must be distinct level indices in \[0, 2\], '):
        _build(name, in_channels=[8, 4, 2], levels=levels)


@pytest.mark.parametrize('name', ['RFB', 'ASPP', 'MPM'])
def test_unselected_level_keeps_its_channels(name):
    with pytest.raises(ValueError, match=rf'^{name}: level 1 is not in levels=\[0\], so it passes '
                       r'through with its 4 channels; got out_channels\[1\] = 6'):
        _build(name, in_channels=[8, 4], levels=[0], out_channels=[8, 6])


# ---------------------------------------------------------------- inputs at forward

@pytest.mark.parametrize('name', ['ASFF', 'RFB', 'ASPP', 'MPM'])
def test_wrong_inputs_name_level_and_expectation(name):
    neck = _build(name, in_channels=[8, 4, 2])
    sizes = [8, 4, 2]
    with pytest.raises(ValueError, match=rf'^{name}: built for 3 levels \(in_channels=\[8, 4, 2\]\)'
                       r', got 2 feature maps'):
        neck(tuple(torch.randn(1, c, s, s) for c, s in zip([8, 4], sizes)))
    with pytest.raises(ValueError, match=rf'^{name}: level 2 must be \[N, 2, H, W\] '
                       r'\(in_channels\[2\] = 2\), got \[1, 3, 2, 2\]'):
        neck(tuple(torch.randn(1, c, s, s) for c, s in zip([8, 4, 3], sizes)))
    with pytest.raises(ValueError, match=rf'^{name}: level 0 must be \[N, 8, H, W\].*got \[8, 8\]'):
        neck((torch.randn(8, 8), torch.randn(1, 4, 4, 4), torch.randn(1, 2, 2, 2)))
    with pytest.raises(TypeError, match=rf'^{name}: level 1 must be a \[N, 4, H, W\] tensor '
                       r'\(in_channels\[1\] = 4\), got list'):
        neck((torch.randn(1, 8, 8, 8), [1, 2], torch.randn(1, 2, 2, 2)))
    with pytest.raises(TypeError, match=rf'^{name}: expected a tuple of 3 feature maps'):
        neck(torch.randn(1, 8, 8, 8))


def test_asff_batch_sizes_must_agree():
    neck = _build('ASFF', in_channels=[4, 4])
    with pytest.raises(ValueError, match=r'^ASFF: every level must have the batch size of level 0 '
                       r'\(2\), level 1 has 1'):
        neck((torch.randn(2, 4, 8, 8), torch.randn(1, 4, 4, 4)))


@pytest.mark.parametrize('name', list(BLOCKS))
def test_block_inputs(name):
    cls, small = BLOCKS[name]
    block = cls(6, **small).eval()
    with pytest.raises(ValueError, match=rf'^{name}: expected 6 input channels, got 5 '
                       r'\(input shape \(1, 5, 4, 4\)\)'):
        block(torch.randn(1, 5, 4, 4))
    with pytest.raises(ValueError, match=rf'^{name}: expected a 4-D input \[N, 6, H, W\], got '
                       r'input shape \(6, 4, 4\)'):
        block(torch.randn(6, 4, 4))
    with pytest.raises(TypeError, match=rf'^{name}: expected a floating-point input'):
        block(torch.ones(1, 6, 4, 4, dtype=torch.long))
    with pytest.raises(TypeError, match=rf'^{name}: expected a \[N, 6, H, W\] tensor, got tuple'):
        block((torch.randn(1, 6, 4, 4), ))


# ---------------------------------------------------------------- properties

def _check_error(err, name, words):
    """A ValueError/TypeError raised by the neck itself, naming one of ``words``."""
    assert isinstance(err, (ValueError, TypeError)), repr(err)
    owners = (name, f'{name}Block')
    assert str(err).split(':')[0] in owners, f'error from outside the neck: {err!r}'
    assert any(w in str(err) for w in words), str(err)
    event('error')


out_channels_st = st.one_of(st.none(), st.integers(-1, 6),
                            st.lists(st.integers(0, 6), min_size=0, max_size=5))
levels_st = st.one_of(st.none(), st.lists(st.integers(-1, 4), min_size=0, max_size=4))


@PROPERTY
@given(name=st.sampled_from(['RFB', 'ASPP', 'MPM']),
       in_channels=st.one_of(st.lists(st.integers(1, 6), min_size=1, max_size=4),
                             st.lists(st.integers(0, 6), min_size=0, max_size=4)),
       out_channels=out_channels_st, levels=levels_st)
def test_per_level_constructor_property(name, in_channels, out_channels, levels):
    """Builds with the documented channels, or names the argument at fault."""
    try:
        neck = _build(name, in_channels=in_channels, out_channels=out_channels, levels=levels)
    except Exception as err:  # noqa: BLE001  checked below
        _check_error(err, name, ('in_channels', 'out_channels', 'levels'))
        return
    n = len(in_channels)
    selected = list(range(n)) if levels is None else sorted(levels)
    assert neck.levels == selected and all(c >= 1 for c in in_channels)
    if out_channels is None:
        expected = list(in_channels)
    elif isinstance(out_channels, int):
        expected = [out_channels if i in selected else c for i, c in enumerate(in_channels)]
    else:
        expected = list(out_channels)
    assert neck.out_channels == expected
    outs = neck(_maps(in_channels, size=3))
    assert [tuple(o.shape) for o in outs] == [(1, c, 3, 3) for c in expected]
    event('built and ran')


@PROPERTY
@given(in_channels=st.one_of(st.lists(st.integers(1, 4), min_size=2, max_size=4),
                             st.lists(st.integers(0, 4), min_size=0, max_size=4)),
       out_channels=out_channels_st,
       strides=st.one_of(st.none(), st.none(), st.lists(st.sampled_from([0, 1, 2, 3, 4, 8, 16]),
                                             min_size=0, max_size=5)))
def test_asff_constructor_property(in_channels, out_channels, strides):
    try:
        neck = _build('ASFF', in_channels=in_channels, out_channels=out_channels,
                      strides=strides)
    except Exception as err:  # noqa: BLE001  checked below
        _check_error(err, 'ASFF', ('in_channels', 'out_channels', 'strides'))
        return
    n = len(in_channels)
    assert n >= 2
    expected = (list(in_channels) if out_channels is None else
                [out_channels] * n if isinstance(out_channels, int) else list(out_channels))
    assert neck.out_channels == expected
    strides = neck.strides
    extent = 16 * max(strides)
    sizes = [math.ceil(extent / s) for s in strides]
    outs = neck(tuple(torch.randn(1, c, s, s) for c, s in zip(in_channels, sizes)))
    assert [tuple(o.shape) for o in outs] == [(1, c, s, s) for c, s in zip(expected, sizes)]
    event('built and ran')


@PROPERTY
@given(name=st.sampled_from(['ASFF', 'RFB', 'ASPP', 'MPM']),
       in_channels=st.lists(st.integers(1, 4), min_size=2, max_size=4),
       data=st.data())
def test_input_levels_property(name, in_channels, data):
    """Inputs with the wrong number of levels, channels, ranks or types: the error names the
    level and the expected value; correct inputs give the documented shapes."""
    neck = _build(name, in_channels=in_channels)
    n = len(in_channels)
    count = data.draw(st.sampled_from([n, n, n, n - 1, n + 1]), label='count')
    channels = [data.draw(st.sampled_from([c, c, c, c + 1]), label=f'c{i}')
                for i, c in enumerate(in_channels + [2] * max(0, count - n))][:count]
    # sizes consistent with ASFF's default strides [1, 2, 4, ...]: 8, 4, 2, 1
    sizes = [max(1, 8 >> i) for i in range(count)]
    maps = [torch.randn(2, c, s, s) for c, s in zip(channels, sizes)]
    broken = data.draw(st.sampled_from([None, None, 'rank', 'type', 'container']),
                       label='broken')
    if broken and count:
        i = data.draw(st.integers(0, count - 1), label='at')
        maps[i] = maps[i][0] if broken == 'rank' else maps[i].tolist() if broken == 'type' \
            else maps[i]
    inputs = maps[0] if broken == 'container' and count else tuple(maps)
    try:
        outs = neck(inputs)
    except Exception as err:  # noqa: BLE001  checked below
        _check_error(err, name, ('level', 'feature maps'))
        if count != n:
            assert f'built for {n} levels' in str(err) or 'tuple of' in str(err)
        else:
            assert f'{n} feature maps' in str(err) or 'level ' in str(err)
        return
    assert count == n and channels == in_channels and broken is None
    assert [tuple(o.shape) for o in outs] == [(2, c, s, s) for c, s in zip(in_channels, sizes)]
    event('ran')
