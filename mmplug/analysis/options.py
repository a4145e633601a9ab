"""Command-line options shared by the timing tools of ``tools/analysis/``.

Argument types that reject non-positive numbers and the ``--speed`` group of
``module_overhead.py`` and ``config_complexity.py``, with the description of a speed run
(``speed_meta``) that goes into their JSON. Import it; it runs nothing by itself.
"""
import argparse

import torch

from mmplug.analysis.timing import device_name

__all__ = ['add_speed_args', 'non_negative_int', 'positive', 'speed_meta']


def positive(cast):
    """An argparse ``type``: ``cast(text)``, rejected unless > 0."""
    def parse(text):
        value = cast(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f'must be positive, got {text}')
        return value
    return parse


def non_negative_int(text):
    """An argparse ``type``: an int >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f'must be >= 0, got {text}')
    return value


def add_speed_args(parser, batch, warmup, repeats):
    """Add ``--speed`` and its settings (defaults: ``batch``, ``warmup``, ``repeats``)."""
    group = parser.add_argument_group('forward speed (with --speed)')
    group.add_argument('--speed', action='store_true',
                       help='also measure forward images/s, interleaved with the baseline')
    group.add_argument('--speed-batch', type=positive(int), default=batch,
                       help=f'images per timed forward (default {batch})')
    group.add_argument('--warmup', type=non_negative_int, default=warmup,
                       help=f'untimed rounds (default {warmup})')
    group.add_argument('--repeats', type=positive(int), default=repeats,
                       help=f'timed rounds, medians (default {repeats})')
    group.add_argument('--threads', type=positive(int),
                       help='torch intra-op threads (default torch.get_num_threads())')
    group.add_argument('--device', help="'cpu' or 'cuda' for the timing (default: cuda when "
                       'available); params and MACs are always counted on the CPU')


def speed_meta(args, threads):
    """What a speed run was: device, threads, torch, batch, warm-up and repeats (JSON-able)."""
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    return dict(device=str(device), device_name=device_name(device), threads=threads,
                torch=torch.__version__, batch=args.speed_batch, warmup=args.warmup,
                repeats=args.repeats)
