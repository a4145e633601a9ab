"""What the analysis tools of ``tools/analysis/`` measure and draw, as importable modules.

``import mmplug`` does not import this package; the tools and the tests import its modules:

* ``timing``: the clock, the round-robin schedule, forward throughput, thread count,
  progress bar and device name the timing tools share;
* ``report``: number formatting, the speed note and the markdown/JSON output;
* ``options``: the command-line options the timing tools share;
* ``macs``: multiply-accumulates of a forward, mmcv's deformable convs included;
* ``peers``: the implementations every module is compared with, the mappings of our
  weights into them (parity) and the per-module candidate lists (``MODULES``);
* ``benchmark``: every module next to its peers (``tools/analysis/benchmark_plugins.py``);
* ``overhead``: plain vs plugged ResNet-50 (``tools/analysis/module_overhead.py``);
* ``complexity``: every config vs its baseline (``tools/analysis/config_complexity.py``);
* ``probes``, ``drawing``, ``figures``, ``visualize``: what the plugins of a model compute
  on one image, drawn (``tools/analysis/visualize_plugins.py``).

Run the tools from the repository root, e.g.
``python tools/analysis/benchmark_plugins.py --smoke``.
"""
