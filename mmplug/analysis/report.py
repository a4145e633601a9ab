"""Number formatting, the speed note and the markdown/JSON output of the analysis tools.

Every table of ``tools/analysis/`` is markdown printed to stdout and optionally written to
``--out``; every number goes to ``--json``. Import it; it runs nothing by itself.
"""
import json
import math

__all__ = ['MIB', 'fmt', 'fmt_ratio', 'fmt_speed', 'speed_note', 'write_outputs']

MIB = 2**20


def fmt(value, digits=3):
    """``value`` with ``digits`` significant digits, no exponent; '-' for None."""
    if value is None:
        return '-'
    if value == 0:
        return '0'
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(value)))))
    return f'{value:.{decimals}f}'


def fmt_ratio(value):
    """``1.23x``; '' for None."""
    return '' if value is None else f'{value:.2f}x'


def fmt_speed(row):
    """The ``speed vs baseline`` cell: ``0.93x (0.90-0.95)``, the median ratio and its
    quartiles over the rounds (``1.00x`` alone where they all agree, as for the
    baseline itself); '-' without a ratio."""
    ratio, iqr = row.get('speed_vs_baseline'), row.get('speed_vs_baseline_iqr')
    if ratio is None:
        return '-'
    if iqr is None or iqr[0] == iqr[1] == ratio:
        return fmt_ratio(ratio)
    return f'{fmt_ratio(ratio)} ({iqr[0]:.2f}-{iqr[1]:.2f})'


def speed_note(meta, paired=False):
    """One sentence saying how the img/s were measured (for a table's notes).

    Args:
        meta (dict): ``options.speed_meta`` of the run.
        paired (bool): Every model was timed against its baseline alone
            (``complexity._paired_speed``), not in one round with all the others.

    Returns:
        str: The note.
    """
    order = ('each model measured against a baseline runs in alternation with it alone, '
             'their order swapped from round to round, so the two share the machine\'s '
             'noise (the baseline\'s img/s: the median over all its pairs)' if paired else
             'in each round the baseline and every model measured against it run once, in '
             'an order shuffled from round to round (seeded), so they share the machine\'s '
             'noise and none always follows the same model')
    note = (f'img/s: forward images per second at batch {meta["batch"]}, eval mode, '
            f'`torch.no_grad()`, fp32, median of {meta["repeats"]} rounds after '
            f'{meta["warmup"]} warm-up; {order}. speed vs baseline: median over the rounds '
            'of the baseline\'s time over the model\'s time in the same round (below 1.00x: '
            'slower), in brackets the quartiles of those per-round ratios (half the rounds '
            f'fell between them). {meta["device_name"]}, '
            f'{meta["threads"]} thread{"s" if meta["threads"] != 1 else ""}, '
            f'torch {meta["torch"]}.')
    if meta['device'].startswith('cuda'):
        note += (' CUDA: CUDA-event times after a synchronize; peak MiB: peak memory '
                 'allocated during one forward above what was allocated before it '
                 '(activations and workspace, not the weights).')
    return note


def write_outputs(table, results, out=None, json_path=None, json_indent=2):
    """Print the markdown ``table``; write it to ``out``, ``results`` to ``json_path``."""
    print(table, end='')
    if out:
        with open(out, 'w', encoding='utf-8') as f:
            f.write(table)
    if json_path:
        with open(json_path, 'w', encoding='utf-8') as f:
            json.dump(results, f, indent=json_indent)
            f.write('\n')
