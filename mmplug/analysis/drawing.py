"""Matplotlib drawing for the plugin figures: the image as the network saw it, maps over it.

``Context`` holds the network input image and maps between image pixels, feature grids
and normalised coordinates; ``overlay`` draws a feature map over the image, ``bars`` one
value per channel, ``profile`` a strip profile. ``mmplug.analysis.figures`` draws each
probe with them. matplotlib is imported by the callers (``visualize.run`` selects the Agg
backend first).
"""
import numpy as np

__all__ = ['ATTN_CMAP', 'GATE_CMAP', 'OVERLAY_ALPHA', 'SIGNED_CMAP', 'Context', 'bars',
           'overlay', 'profile', 'show_image', 'value_range']

#: Colour maps: gates in [0, 1] (or [0, 2]), signed maps, attention.
GATE_CMAP, SIGNED_CMAP, ATTN_CMAP = 'viridis', 'coolwarm', 'magma'
OVERLAY_ALPHA = 0.6


class Context:
    """The image as the network saw it and coordinate maps between it and feature grids.

    Feature maps cover the padded network input (``pad_hw``); the valid image is
    the top-left ``img_hw`` of it. Image coordinates are pixels of the network
    input; ``--query``/``--points`` are given in the original image and scaled.

    Args:
        image (np.ndarray): ``[h, w, 3]`` uint8 RGB, the unpadded network input.
        pad_hw (tuple): ``(H, W)`` of the padded network input.
        scale (tuple): ``(sy, sx)`` from the original image to the network input.
        query (tuple): The NonLocal query, ``(y, x)`` network-input pixels.
        points (list): The DCN points, ``(y, x)`` network-input pixels.
        topk (int): Channels labelled in bar charts.
        note (str): What the weights are (a line of every figure).
        title (str): Config and image (a line of every figure).
    """

    def __init__(self, image, pad_hw, scale, query, points, topk, note, title):
        self.image = image  # [h, w, 3] uint8 RGB, unpadded network input
        h, w = image.shape[:2]
        self.img_hw, self.pad_hw = (h, w), tuple(pad_hw)
        self.padded_image = np.zeros((*self.pad_hw, 3), np.uint8)
        self.padded_image[:h, :w] = image[:self.pad_hw[0], :self.pad_hw[1]]
        self.pad_extent = (0, self.pad_hw[1], self.pad_hw[0], 0)
        self.xlim, self.ylim = (0, w), (h, 0)
        self.scale = scale  # (sy, sx): original image -> network input
        self.query = self.clip(query)
        self.points = [self.clip(p) for p in points]
        self.topk, self.note, self.title = topk, note, title

    def to_input(self, point):
        """Original-image pixel ``(y, x)`` -> network-input pixel."""
        return point[0] * self.scale[0], point[1] * self.scale[1]

    def clip(self, point):
        """``point`` moved into the image."""
        return (min(max(point[0], 0), self.img_hw[0] - 1),
                min(max(point[1], 0), self.img_hw[1] - 1))

    def feature_index(self, point, hw):
        """Cell (row, col) of a ``hw`` feature grid that holds image ``point``."""
        return (min(int(point[0] * hw[0] / self.pad_hw[0]), hw[0] - 1),
                min(int(point[1] * hw[1] / self.pad_hw[1]), hw[1] - 1))

    def feature_to_image(self, y, x, hw):
        """Feature coordinates (cell centres at integers) -> image pixels."""
        sy, sx = self.pad_hw[0] / hw[0], self.pad_hw[1] / hw[1]
        return ((np.asarray(y) + 0.5) * sy, (np.asarray(x) + 0.5) * sx)

    def norm_to_image(self, u, v):
        """``[-1, 1]`` (align_corners=False) coordinates -> image ``(x, y)`` for plotting."""
        return (np.asarray(u) + 1) / 2 * self.pad_hw[1], (np.asarray(v) + 1) / 2 * self.pad_hw[0]


def value_range(values, pad=0.05):
    """``(vmin, vmax)`` of ``values``, widened around a constant so it gets one colour."""
    lo, hi = float(values.min()), float(values.max())
    if hi - lo <= 1e-6 * max(1.0, abs(hi)):
        return lo - pad, hi + pad
    return lo, hi


def show_image(ax, ctx):
    """The image (unpadded network input) on ``ax``, without axes."""
    ax.imshow(ctx.image, extent=(0, ctx.img_hw[1], ctx.img_hw[0], 0))
    ax.set_xlim(*ctx.xlim)
    ax.set_ylim(*ctx.ylim)
    ax.set_axis_off()


def overlay(fig, ax, ctx, fmap, title, cmap, vmin=None, vmax=None, signed=False,
            alpha=OVERLAY_ALPHA):
    """``fmap`` (a feature grid over the padded input) over the image, with a colour bar."""
    show_image(ax, ctx)
    if signed:
        lim = float(np.abs(fmap).max()) or 1.0
        vmin, vmax = -lim, lim
    elif vmin is None or vmax is None:
        lo, hi = value_range(fmap)
        vmin = lo if vmin is None else vmin
        vmax = hi if vmax is None else max(vmax, vmin + 1e-6)
    im = ax.imshow(fmap, extent=ctx.pad_extent, cmap=cmap, alpha=alpha,
                   interpolation='nearest', vmin=vmin, vmax=vmax)
    ax.set_xlim(*ctx.xlim)
    ax.set_ylim(*ctx.ylim)
    if title:
        lo, hi = float(fmap.min()), float(fmap.max())
        flat = f', constant {lo:.3g}' if hi - lo <= 1e-6 * max(1.0, abs(hi)) else ''
        ax.set_title(f'{title}\n(grid {fmap.shape[0]}x{fmap.shape[1]}{flat})', fontsize=9)
    if fig is not None:
        fig.colorbar(im, ax=ax, shrink=0.8)
    return im


def bars(ax, values, topk, label):
    """A bar per channel from 0; the ``topk`` largest in red, labelled with their index."""
    c = len(values)
    lo, hi = float(values.min()), float(values.max())
    equal = hi - lo <= 1e-6 * max(1.0, abs(hi))
    top = [] if equal else np.argsort(-values, kind='stable')[:topk]
    colours = np.full(c, 'tab:blue', dtype=object)
    colours[top] = 'tab:red'
    ax.bar(np.arange(c), values, width=1.0, color=list(colours), linewidth=0)
    ax.axhline(values.mean(), color='k', lw=0.8, ls='--', label=f'mean {values.mean():.3f}')
    for rank, i in enumerate(top):
        ax.annotate(f'c{i}', (i, values[i]), xytext=(0, 3 + 10 * (rank % 3)),
                    textcoords='offset points', ha='center', fontsize=8, color='tab:red',
                    arrowprops=dict(arrowstyle='-', color='tab:red', lw=0.5))
    ax.set_xlim(-0.5, c - 0.5)
    ax.set_ylim(min(0.0, lo), max(hi, 1e-6) * 1.25)
    ax.set_xlabel(f'channel (of {c})' + (f'; all equal to {hi:.4g}' if equal else
                                         f'; top {len(top)} in red, range {lo:.3g}-{hi:.3g}'))
    ax.set_ylabel(label)
    ax.legend(loc='lower right', fontsize=8)


def profile(ax, values, title, axis_label, vertical=False):
    """``values`` along the rows (``vertical``) or columns of the feature grid."""
    from matplotlib.ticker import MaxNLocator
    idx = np.arange(len(values))
    value_axis, index_axis = (ax.xaxis, ax.yaxis) if vertical else (ax.yaxis, ax.xaxis)
    if vertical:
        ax.plot(values, idx, marker='.')
        ax.invert_yaxis()
    else:
        ax.plot(idx, values, marker='.')
    index_axis.set_label_text(f'{axis_label} of the feature grid')
    value_axis.set_label_text('channel mean')
    index_axis.set_major_locator(MaxNLocator(integer=True))
    value_axis.set_major_locator(MaxNLocator(4))
    ax.ticklabel_format(axis='x' if vertical else 'y', style='sci', scilimits=(-2, 3))
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
