"""Shared parts of the necks: checking multi-level inputs, and a neck that runs one
block per level.

mmdet's and mmseg's necks take the tuple of features a backbone (or another
neck, in a ``neck=[...]`` chain) returns and give a tuple back. RFB, ASPP and MPM
are blocks that transform one feature map; as necks they run one block per
selected level and pass the other levels through unchanged.
"""
import torch
from mmengine.model import BaseModule, ModuleDict

from mmplug.utils.validation import check_int


def check_in_channels(owner, in_channels):
    """Return ``in_channels`` as a list of positive ints (one per level), else raise."""
    if not isinstance(in_channels, (list, tuple)) or len(in_channels) == 0:
        raise ValueError(f'{owner}: in_channels must be a non-empty list of ints (one per '
                         f'input level), got {in_channels!r}')
    for level, c in enumerate(in_channels):
        check_int(owner, f'in_channels[{level}]', c)
    return list(in_channels)


def check_inputs(owner, inputs, in_channels):
    """Check that ``inputs`` has one ``[N, C_l, H, W]`` map per level with ``C_l`` as built.

    Errors name the level and say what was expected, e.g. for a neck built for
    FPN's five 256-channel outputs but fed a backbone's ``[256, 512, 1024, 2048]``.
    """
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


class PerLevelNeck(BaseModule):
    """A neck that runs one block per selected input level.

    Subclasses implement ``_build_block(in_channels, out_channels)``; this class
    validates the channel lists, builds one block per selected level (never a
    shared module), checks the inputs at run time and passes unselected levels
    through unchanged.

    Args:
        in_channels (list[int]): Channels of each input level.
        out_channels (int | list[int], optional): Output channels of the selected
            levels: one int for all, or one per input level (an unselected level
            must keep its channels). Defaults to None (``in_channels``).
        levels (list[int], optional): Indices of the levels to transform; the
            others pass through. Defaults to None (all levels).
        init_cfg (dict | list[dict], optional): mmengine init config. Defaults
            to None.
    """

    def __init__(self, in_channels, out_channels=None, levels=None, init_cfg=None):
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
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.levels = sorted(levels)
        self.blocks = ModuleDict({
            str(i): self._build_block(in_channels[i], out_channels[i]) for i in self.levels
        })

    def _build_block(self, in_channels, out_channels):
        raise NotImplementedError

    def forward(self, inputs):
        check_inputs(type(self).__name__, inputs, self.in_channels)
        return tuple(self.blocks[str(i)](x) if str(i) in self.blocks else x
                     for i, x in enumerate(inputs))
