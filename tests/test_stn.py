"""STN: identity at init, the paper's sampler, known transforms, parity with F.grid_sample
(the contract every module meets, inside mmdet's and mmseg's ResNet too: test_contract.py)."""
import pytest
import torch
import torch.nn.functional as F

from mmplug.plugins.stn import STN, _affine_bilinear_sample

from _harness import (
    assert_grads_reach_every_parameter,
    randomize_,
)

_IDENTITY = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def _reference_sample(x, theta, padding_mode='zeros'):
    """Paper Eqs. 1 and 5 in float64, summing the kernel over every source pixel.

    Target pixel centres in normalised coordinates (align_corners=False), source
    ``(x_s, y_s) = A_theta (x_t, y_t, 1)`` converted to pixels, then
    ``V = sum_{n,m} U(n, m) max(0, 1 - |x_s - m|) max(0, 1 - |y_s - n|)``.
    """
    x, theta = x.double(), theta.double()
    n, c, h, w = x.shape
    xt = (2 * torch.arange(w, dtype=torch.float64) + 1) / w - 1
    yt = (2 * torch.arange(h, dtype=torch.float64) + 1) / h - 1
    yt, xt = torch.meshgrid(yt, xt, indexing='ij')
    target = torch.stack([xt.flatten(), yt.flatten(), torch.ones(h * w, dtype=torch.float64)])
    src = theta @ target  # [N, 2, HW] normalised source coordinates
    xs = ((src[:, 0] + 1) * w - 1) / 2  # [N, HW] pixels
    ys = ((src[:, 1] + 1) * h - 1) / 2
    if padding_mode == 'border':
        xs, ys = xs.clamp(0, w - 1), ys.clamp(0, h - 1)
    kx = (1 - (xs[..., None] - torch.arange(w, dtype=torch.float64)).abs()).clamp_min(0)
    ky = (1 - (ys[..., None] - torch.arange(h, dtype=torch.float64)).abs()).clamp_min(0)
    return torch.einsum('ncij,ntj,nti->nct', x, kx, ky).reshape(n, c, h, w)


def _set_theta(stn, theta):
    with torch.no_grad():
        stn.loc_fc.weight.zero_()
        stn.loc_fc.bias.copy_(torch.tensor(theta, dtype=torch.float32))
    return stn


def _randomize(stn, seed=0):
    """Random localisation net with a transform near the identity (not 0, which samples
    everything at the centre)."""
    randomize_(stn, seed=seed, scale=0.2)
    with torch.no_grad():
        stn.loc_fc.weight.mul_(0.1)
        stn.loc_fc.bias.add_(torch.tensor(_IDENTITY))
    return stn


@pytest.mark.parametrize('shape', [(1, 32, 1, 1), (1, 32, 7, 9), (2, 32, 16, 15),
                                   (3, 32, 5, 1), (2, 32, 64, 63)])
def test_identity_at_init_exactly(shape, device):
    stn = STN(shape[1]).to(device)
    x = torch.randn(shape, device=device)
    assert torch.equal(stn(x), x)
    # Whatever the localisation convs compute, theta stays the identity (weight 0).
    randomize_(stn.loc_convs)
    assert torch.equal(stn(x), x)
    assert torch.equal(stn.loc_fc.bias, torch.tensor(_IDENTITY, device=device))


def test_grid_sample_is_not_exact_at_identity():
    # Why the sampler is written out: grid_sample's round trip through normalised
    # coordinates misses pixel centres by float rounding.
    x = torch.randn(2, 8, 64, 63)
    theta = torch.tensor(_IDENTITY).view(1, 2, 3).expand(2, 2, 3)
    peer = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False),
                         align_corners=False)
    assert not torch.equal(peer, x) and (peer - x).abs().max() < 1e-3
    assert torch.equal(_affine_bilinear_sample(x, theta), x)


@pytest.mark.parametrize('h, w', [(6, 8), (7, 9)])
def test_known_transforms(h, w, device):
    stn = STN(16).to(device)
    x = torch.randn(2, 16, h, w, device=device)
    tol = dict(rtol=1e-5, atol=1e-5)
    # One pixel to the right in the source (2 / W in normalised units): out[j] = x[j + 1].
    out = _set_theta(stn, [1, 0, 2 / w, 0, 1, 0])(x)
    torch.testing.assert_close(out[..., :-1], x[..., 1:], **tol)
    torch.testing.assert_close(out[..., -1], torch.zeros_like(out[..., -1]), **tol)  # zeros
    # Two rows down.
    out = _set_theta(stn, [1, 0, 0, 0, 1, 4 / h])(x)
    torch.testing.assert_close(out[:, :, :-2], x[:, :, 2:], **tol)
    assert out[:, :, -2:].abs().max() < 1e-5
    # Horizontal flip, vertical flip, rotation by 180 degrees.
    torch.testing.assert_close(_set_theta(stn, [-1, 0, 0, 0, 1, 0])(x), x.flip(-1), **tol)
    torch.testing.assert_close(_set_theta(stn, [1, 0, 0, 0, -1, 0])(x), x.flip(-2), **tol)
    torch.testing.assert_close(_set_theta(stn, [-1, 0, 0, 0, -1, 0])(x), x.flip(-1, -2), **tol)
    # Half a pixel to the right: the mean of neighbours (Eq. 5).
    out = _set_theta(stn, [1, 0, 1 / w, 0, 1, 0])(x)
    torch.testing.assert_close(out[..., :-1], (x[..., :-1] + x[..., 1:]) / 2, **tol)


def test_border_padding_repeats_the_edge():
    stn = STN(8, padding_mode='border')
    x = torch.randn(1, 8, 5, 6)
    out = _set_theta(stn, [1, 0, 4 / 6, 0, 1, 0])(x)  # two pixels to the right
    torch.testing.assert_close(out[..., :-2], x[..., 2:])
    torch.testing.assert_close(out[..., -2:], x[..., -1:].expand(1, 8, 5, 2))


@pytest.mark.parametrize('padding_mode', ['zeros', 'border'])
@pytest.mark.parametrize('shape', [(2, 4, 1, 1), (2, 4, 7, 9), (3, 4, 16, 15)])
def test_sampler_matches_paper_equations_and_grid_sample(padding_mode, shape):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen)
    theta = torch.tensor(_IDENTITY).view(1, 2, 3) + 0.4 * torch.randn(shape[0], 2, 3,
                                                                       generator=gen)
    ours = _affine_bilinear_sample(x, theta, padding_mode)
    ref = _reference_sample(x, theta, padding_mode).float()
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    grid = F.affine_grid(theta, list(shape), align_corners=False)
    peer = F.grid_sample(x, grid, padding_mode=padding_mode, align_corners=False)
    diff = (ours - peer).abs().max().item()
    assert diff < 1e-4, diff


def test_module_forward_matches_reference_per_sample(device):
    stn = _randomize(STN(32, num_convs=3)).to(device)
    x = torch.randn(3, 32, 12, 10, device=device)
    with torch.no_grad():
        theta = stn.loc_fc(stn.loc_convs(x).mean(dim=(2, 3))).view(3, 2, 3)
    assert (theta[0] - theta[1]).abs().max() > 1e-3  # a transform per sample
    ref = _reference_sample(x.cpu(), theta.cpu()).float().to(device)
    torch.testing.assert_close(stn(x), ref, rtol=1e-4, atol=1e-4)


def test_gradients_reach_every_parameter(device):
    stn = _randomize(STN(32, norm_cfg=dict(type='BN'))).to(device)
    x = torch.randn(2, 32, 9, 7, device=device, requires_grad=True)
    assert_grads_reach_every_parameter(stn, x)


def test_at_init_only_the_regression_layer_learns():
    stn = STN(16)
    stn(torch.randn(2, 16, 8, 8)).square().sum().backward()
    assert stn.loc_fc.weight.grad.abs().sum() > 0 and stn.loc_fc.bias.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in stn.loc_convs.parameters())


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_low_precision_autocast_is_finite(dtype, device):
    torch.manual_seed(0)
    stn = _randomize(STN(32)).to(device)
    conv = torch.nn.Conv2d(32, 32, 1).to(device)
    x = torch.randn(2, 32, 15, 14, device=device) * 10
    with torch.autocast(device_type=device.type, dtype=dtype):
        y = conv(x)
        out = stn(y)
    assert out.dtype == y.dtype == dtype and torch.isfinite(out).all()
    # theta and the sampling in float32: only the localisation features (low precision)
    # and the rounding of the output differ from fp32.
    ref = stn(y.float())
    diff = (out.float() - ref).abs().max().item()
    assert diff < 0.02 * ref.abs().max().item(), diff
    with torch.autocast(device_type=device.type, dtype=dtype):
        assert torch.equal(STN(32).to(device)(y), y)  # identity stays exact
