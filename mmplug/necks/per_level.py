"""Shared parts of the necks: multi-level input checks, and a neck that runs its own
block on each selected level and passes the others through.
"""
import copy
import inspect

import torch
from mmengine.model import BaseModule, ModuleDict, Sequential

from mmplug.layers import check_cfg, check_int
from mmplug.registry import MODELS


def check_in_channels(owner, in_channels):
    """Return ``in_channels`` as a list of positive ints (one per level), else raise."""
    if not isinstance(in_channels, (list, tuple)) or len(in_channels) == 0:
        raise ValueError(f'{owner}: in_channels must be a non-empty list of ints (one per '
                         f'input level), got {in_channels!r}')
    for level, c in enumerate(in_channels):
        check_int(owner, f'in_channels[{level}]', c)
    return list(in_channels)


def check_inputs(owner, inputs, in_channels):
    """Check that ``inputs`` has one ``[N, C_l, H, W]`` map per level; errors name the level."""
    if not isinstance(inputs, (list, tuple)):
        raise TypeError(f'{owner}: expected a tuple of {len(in_channels)} feature maps (one per '
                        f'level), got {type(inputs).__name__}')
    if len(inputs) != len(in_channels):
        raise ValueError(f'{owner}: built for {len(in_channels)} levels (in_channels='
                         f'{list(in_channels)}), got {len(inputs)} feature maps')
    for level, (x, c) in enumerate(zip(inputs, in_channels)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f'{owner}: level {level} must be a [N, {c}, H, W] tensor (in_channels['
                            f'{level}] = {c}), got {type(x).__name__}')
        if x.dim() != 4 or x.shape[1] != c:
            raise ValueError(f'{owner}: level {level} must be [N, {c}, H, W] (in_channels['
                             f'{level}] = {c}), got {list(x.shape)}')


@MODELS.register_module()
class PerLevelNeck(BaseModule):
    """A neck that runs its own copy of one block on each selected level; the others pass.

    ``RFB``, ``ASPP`` and ``MPM`` are this neck with their block; any registered
    ``Module(in_channels, out_channels, ...)`` works, e.g. SPHead's 1x1 reduction::

        neck=dict(type='PerLevelNeck', in_channels=[256, 512, 1024, 2048],
                  out_channels=1024, levels=[3],
                  block=dict(type='ConvModule', kernel_size=1, norm_cfg=dict(type='BN')))

    Args:
        in_channels (list[int]): Channels of each input level.
        out_channels (int | list[int], optional): Output channels of the selected
            levels (an unselected level keeps its channels). Defaults to None.
        levels (list[int], optional): Levels to transform. Defaults to None (all).
        block (dict): Config of the block, deep-copied per selected level.
        num_blocks (int, optional): Stack this many blocks per level (keys
            ``blocks.<level>.<k>.*``). Defaults to None: one block, keys
            ``blocks.<level>.*``.
        init_cfg (dict | list[dict], optional): mmengine init config. Defaults
            to None.
    """

    def __init__(self, in_channels, out_channels=None, levels=None, *, block, num_blocks=None,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        owner = type(self).__name__
        in_channels = check_in_channels(owner, in_channels)
        num_levels = len(in_channels)
        if levels is None:
            levels = list(range(num_levels))
        if not isinstance(levels, (list, tuple)) or len(levels) == 0 or len(set(levels)) != len(
                levels) or any(isinstance(i, bool) or not isinstance(i, int)
                               or not 0 <= i < num_levels for i in levels):
            raise ValueError(f'{owner}: levels must be distinct level indices in '
                             f'[0, {num_levels - 1}], got {levels!r}')
        if out_channels is None:
            out_channels = list(in_channels)
        elif isinstance(out_channels, int) and not isinstance(out_channels, bool):
            check_int(owner, 'out_channels', out_channels)
            out_channels = [out_channels if i in levels else c for i, c in enumerate(in_channels)]
        elif isinstance(out_channels, (list, tuple)) and len(out_channels) == num_levels:
            out_channels = list(out_channels)
            for i, c in enumerate(out_channels):
                check_int(owner, f'out_channels[{i}]', c)
                if i not in levels and c != in_channels[i]:
                    raise ValueError(f'{owner}: level {i} is not in levels={list(levels)}, so it '
                                     f'passes through with its {in_channels[i]} channels; got '
                                     f'out_channels[{i}] = {c}')
        else:
            raise ValueError(f'{owner}: out_channels must be None, an int or a list of '
                             f'{num_levels} ints (one per level), got {out_channels!r}')
        if num_blocks is not None:
            check_int(owner, 'num_blocks', num_blocks)
        self.block_cls, self.block_kwargs = _block_class(owner, block)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.levels = sorted(levels)
        self.num_blocks = num_blocks
        self.blocks = ModuleDict({
            str(i): self._build_level(in_channels[i], out_channels[i]) for i in self.levels
        })

    def _build_block(self, in_channels, out_channels):
        return self.block_cls(in_channels=in_channels, out_channels=out_channels,
                              **copy.deepcopy(self.block_kwargs))

    def _build_level(self, in_channels, out_channels):
        if self.num_blocks is None:
            return self._build_block(in_channels, out_channels)
        return Sequential(*[self._build_block(in_channels if k == 0 else out_channels,
                                              out_channels) for k in range(self.num_blocks)])

    def forward(self, inputs):
        check_inputs(type(self).__name__, inputs, self.in_channels)
        return tuple(self.blocks[str(i)](x) if str(i) in self.blocks else x
                     for i, x in enumerate(inputs))


def _block_class(owner, block):
    """The block's class (resolved in the current scope's registry) and its other
    arguments; an argument the block does not take raises here, naming it."""
    check_cfg(owner, 'block', block, allow_none=False)
    kwargs = copy.deepcopy(dict(block))
    block_type = kwargs.pop('type')
    if isinstance(block_type, str):
        with MODELS.switch_scope_and_registry(kwargs.pop('_scope_', None)) as registry:
            block_type = registry.get(block_type)
    params = inspect.signature(block_type.__init__).parameters
    for name in ('in_channels', 'out_channels'):
        if name in kwargs:
            raise ValueError(f'{owner}: block sets {name}, which the neck gives each level; got '
                             f'block={block!r}')
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            accepted = [n for n in params if n not in ('self', 'in_channels', 'out_channels')]
            raise TypeError(f'{owner}: unexpected keyword argument(s) '
                            f'{", ".join(map(repr, unknown))}; the block arguments (passed to '
                            f'every {block_type.__name__}) are {", ".join(accepted)}')
    return block_type, kwargs
