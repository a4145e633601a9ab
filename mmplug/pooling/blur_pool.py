"""BlurPool: anti-aliased subsampling.

Zhang. "Making Convolutional Networks Shift-Invariant Again", ICML 2019.
https://arxiv.org/abs/1904.11486

A fixed depthwise binomial filter (Pascal's triangle row, outer product,
normalised to sum 1) applied with the stride, before every subsampling
(``MaxPool -> Max + BlurPool``). Padding follows the authors' layout
(``(filt_size - 1) // 2`` before, the rest after; reflect): output
``ceil(H / stride)``. No parameters. Deviations: none.
"""
from mmplug.layers import Blur
from mmplug.registry import MODELS


@MODELS.register_module()
class BlurPool2d(Blur):
    """Anti-aliased subsampling: depthwise binomial blur with a stride.

    Args:
        in_channels (int): Channels of the input.
        filt_size (int): Binomial filter size, 1 (plain subsampling) to 7.
            Defaults to 3.
        stride (int): Subsampling factor. Defaults to 2.
        pad_mode (str): 'reflect', 'replicate', 'zero' (alias 'constant') or
            'circular'. Defaults to 'reflect' (the authors').
        init_cfg (dict | list[dict], optional): mmengine init config. Defaults
            to None.

    Note:
        No checkpoint keys. It changes the stride, so it is no plugin: put it
        after a stride-1 max pool or conv. 'reflect' needs ``H, W >
        ceil((filt_size - 1) / 2)``.

    Example:
        >>> import torch
        >>> from mmplug import BlurPool2d
        >>> pool = BlurPool2d(64, filt_size=3, stride=2)
        >>> pool(torch.randn(2, 64, 15, 16)).shape
        torch.Size([2, 64, 8, 8])
    """

    _abbr_ = 'blur_pool'

    def __init__(self, in_channels, filt_size=3, stride=2, pad_mode='reflect', init_cfg=None):
        super().__init__(in_channels, filt_size, stride, pad_mode)
