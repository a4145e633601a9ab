"""Channel arithmetic of every reduction: ``rd_ratio`` (hidden width as a fraction of the
input), ``rd_channels`` (explicit width, overrides it), ``rd_divisor`` (round to a multiple).
"""
from .validation import check_int

__all__ = ['make_divisible', 'reduced_channels']


def make_divisible(value, divisor=8, min_value=None, round_limit=0.9):
    """Round ``value`` to the nearest multiple of ``divisor``, at least ``min_value``
    (default: ``divisor``), and never below ``round_limit * value``."""
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < round_limit * value:
        new_value += divisor
    return new_value


def reduced_channels(owner, in_channels, rd_ratio, rd_channels=None, rd_divisor=1,
                     min_channels=1):
    """The hidden width of a reduction (SE's bottleneck, CBAM's MLP, SK's ``d``).

    Args:
        owner (str): Class name, for error messages.
        in_channels (int): Input channels.
        rd_ratio (float): Hidden width as a fraction of ``in_channels``.
        rd_channels (int, optional): Explicit hidden width; overrides ``rd_ratio``.
        rd_divisor (int): Round the width from ``rd_ratio`` to a multiple of this.
        min_channels (int): Lower bound of the width from ``rd_ratio`` (SK's ``L``).
    """
    if rd_channels is not None:
        return check_int(owner, 'rd_channels', rd_channels)
    if isinstance(rd_ratio, bool) or not isinstance(rd_ratio, (int, float)) \
            or not 0 < rd_ratio <= 1:
        raise ValueError(f'{owner}: rd_ratio must be a number in (0, 1], got {rd_ratio!r}')
    check_int(owner, 'rd_divisor', rd_divisor)
    width = in_channels * rd_ratio
    if rd_divisor > 1:
        width = make_divisible(width, rd_divisor, round_limit=0.0)
    return max(int(width), min_channels, 1)
