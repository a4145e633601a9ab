"""Draw what the plugins of an mmdet/mmseg model compute on one image: gates, attention, sampling.

The model is built from the config the way ``tools/test.py`` builds it (the
config's ``default_scope``, mmplug imported, SyncBN reverted to BN), the
checkpoint is loaded if one is given, and one image goes through the config's
test pipeline (``cfg.test_dataloader.dataset.pipeline``) and the model's data
preprocessor, so resizing, normalisation and padding are the real ones. Without
``--image`` it is image ``--index`` of the config's test set; an embedded demo
set (``data/coco_shapes``, ``data/cityscapes_shapes``) is generated on first
use, as by ``tools/train.py``. Without ``--checkpoint`` the weights are the
config's init (``init_weights()`` with ``Pretrained`` inits skipped, nothing is
downloaded), and every figure says so: gates then show their init values.

Modules are found by ``isinstance`` over ``model.named_modules()``. Forward
pre-hooks record each module's input during one ``mode='predict'`` forward (and
forward hooks the outputs of the few submodules named below); they return
nothing, so no module runs differently, and are removed before anything is
recomputed. Every figure then calls the module's own public method on the
recorded input (first image), so it shows what the module multiplies its input
by (``mmplug/analysis/probes.py``):

* ``SE``: ``channel_gate(x)``: a bar chart over the channels, the top-k labelled.
* ``CBAM``: ``gates(x)``: the channel gate as bars; the spatial gate over the
  image (none with ``no_spatial``).
* ``SGE``: ``gate(x)``: one map per group ``G`` in a grid, and their mean over
  the image.
* ``StripPooling``: ``gate(x)`` (channel mean over the image, and its range),
  and the two strip profiles, the channel means of the ``conv_h`` (along H) and
  ``conv_w`` (along W) outputs.
* ``MPMBlock`` (no gate and no such method; SPNet's mixed pooling adds a
  residual): the channel means of the outputs of its short-range (pyramid) and
  long-range (strip) branches and of the residual it adds (``expand``), over
  the image.
* ``STN``: ``theta(x)``; where every output position samples its input, drawn
  as a warped grid over the image (the regular grid in grey), and the image
  warped by the same transform.
* Deformable convs: the sampling points of the layer's ``k x k`` taps for a few
  image points (``--points``; offsets in mmcv's layout, ``(dy, dx)`` per tap);
  the modulation mask as point colour and size; and the mean offset length
  over the image. ``DCNv2UnitMask``: ``offsets_and_mask(x)`` (mask
  ``2 * sigmoid``); mmcv's ``DCN``/``DCNv2`` packs: their ``conv_offset``
  output, split as mmcv does (mask ``sigmoid`` for DCNv2, 1 for DCN); their
  plain ``DeformConv2d``/``ModulatedDeformConv2d`` bases: the offset and mask
  they are called with. These are one layer's points on its own input, not
  compounded through the stack.
* ``ASFF``: ``fusion_weights(inputs)``: per output level (rows) the weight of
  every source level (columns), over the image.
* ``NonLocal``: ``attention(x, query)``, the attention row of one query
  position (``--query``) over the key grid (the output grid of its ``pool``),
  over the image.

Plus the model's detections (mmdet's ``DetLocalVisualizer``) or segmentation
(mmseg's ``SegLocalVisualizer``), ground truth beside them when the image has
it. Output: one PNG per module instance, named after its path in the model
(``backbone.layer1.0.se.png``), ``predictions.png``, ``summary.png`` (all
figures as thumbnails) and ``index.md`` (the list, with a line of numbers per
figure). Image coordinates (``--query``, ``--points``) are ``Y X`` pixels of the
input image file (before the pipeline's resize).

    python tools/analysis/visualize_plugins.py configs/faster_rcnn_r50_dcn_asff_demo_coco-shapes.py
    python tools/analysis/visualize_plugins.py CONFIG --checkpoint work_dirs/x/epoch_3.pth \\
        --image demo.jpg --out-dir vis/ --query 40 60 --points 40 60 90 30
    python tools/analysis/visualize_plugins.py CONFIG --modules 'backbone.layer4.*' --max-per-kind 2
"""
import argparse
import os.path as osp

from mmplug.analysis.visualize import VisualizeError, run


def _pairs(values, option):
    if values is None:
        return None
    if len(values) % 2:
        raise argparse.ArgumentTypeError(f'{option} takes Y X pairs, got {len(values)} numbers')
    return [(values[i], values[i + 1]) for i in range(0, len(values), 2)]


def parse_args(argv=None):
    """The options of ``argv`` (None: the command line); ``--points`` as pairs."""
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='mmdet or mmseg config file')
    parser.add_argument('--checkpoint', help='checkpoint to load (default: the config\'s init)')
    parser.add_argument('--image', help='image file (default: an image of the config\'s test '
                                        'set; embedded demo sets are generated on first use)')
    parser.add_argument('--index', type=int, default=0,
                        help='which test-set image without --image (default 0)')
    parser.add_argument('--out-dir', default='vis_plugins', help='folder for the PNGs')
    parser.add_argument('--query', type=float, nargs=2, metavar=('Y', 'X'),
                        help='query pixel of the NonLocal attention, in the image file\'s '
                             'pixels (default: the first ground-truth box centre, else the '
                             'image centre)')
    parser.add_argument('--points', type=float, nargs='+', metavar='Y X',
                        help='pixels whose DCN sampling points are drawn, Y X pairs (default: '
                             'up to 3 ground-truth box centres, else 3 fixed points)')
    parser.add_argument('--modules', nargs='+', metavar='PATTERN',
                        help='only modules whose path matches one of these fnmatch patterns, '
                             'e.g. "backbone.layer4.*"')
    parser.add_argument('--max-per-kind', type=int,
                        help='at most this many instances of each module type (the first ones)')
    parser.add_argument('--topk', type=int, default=5, help='channels labelled in bar charts')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='score threshold of the drawn detections (mmdet)')
    parser.add_argument('--device', default='cpu', help='device, e.g. cpu or cuda:0')
    parser.add_argument('--seed', type=int, default=0, help='seed of the config\'s init')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, key=value pairs')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)
    try:
        args.points = _pairs(args.points, '--points')
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))
    if args.max_per_kind is not None and args.max_per_kind < 1:
        parser.error(f'--max-per-kind must be >= 1, got {args.max_per_kind}')
    return args


def main(argv=None):
    """Write the figures (arguments as on the command line); returns the index entries."""
    args = parse_args(argv)
    try:
        entries = run(args.config, args.checkpoint, args.image, args.index, args.out_dir,
                      args.query, args.points, args.device, args.cfg_options, args.modules,
                      args.max_per_kind, args.topk, args.score_thr, not args.no_progress,
                      args.seed)
    except VisualizeError as err:
        raise SystemExit(f'visualize_plugins: {err}') from err
    print(f'{len(entries)} figures in {args.out_dir}: see {osp.join(args.out_dir, "index.md")} '
          f'and summary.png')
    return entries


if __name__ == '__main__':
    main()
