"""SSIM (separable convolutions) against a float64 reference written plainly (direct 2D window sums),
forward and gradients; gradcheck; known answers; the L1 + D-SSIM loss; bad inputs."""
import math

import pytest
import torch

from ffavatar.avatar.ssim import gaussian_window, l1_ssim_loss, psnr, ssim, ssim_map


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def ref_ssim_map(a, b, size=11, sigma=1.5):
    """[B,H,W,C] float64: the 2D Gaussian window summed directly over each pixel's neighbourhood
    (zero outside the image), then the SSIM formula (C1 = 0.01^2, C2 = 0.03^2)."""
    a, b = a.double(), b.double()
    r = size // 2
    g = [math.exp(-(i - r) ** 2 / (2 * sigma ** 2)) for i in range(size)]
    s = sum(g)
    g = [v / s for v in g]
    B, H, W, C = a.shape

    def window_sum(x):
        pad = torch.zeros(B, H + 2 * r, W + 2 * r, C, dtype=torch.float64)
        pad[:, r:r + H, r:r + W] = x
        out = torch.zeros(B, H, W, C, dtype=torch.float64)
        for di in range(size):
            for dj in range(size):
                out = out + g[di] * g[dj] * pad[:, di:di + H, dj:dj + W]
        return out

    mu_a, mu_b = window_sum(a), window_sum(b)
    var_a = window_sum(a * a) - mu_a ** 2
    var_b = window_sum(b * b) - mu_b ** 2
    cov = window_sum(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))


def _pair(B=2, H=13, W=17, C=3):
    a = torch.rand(B, H, W, C)
    b = (a + 0.15 * torch.randn(B, H, W, C)).clamp(0, 1)
    return a, b


def test_window():
    g = gaussian_window(11, 1.5, dtype=torch.float64)
    assert g.shape == (11,) and abs(g.sum().item() - 1) < 1e-12 and g.argmax().item() == 5
    assert torch.allclose(g, g.flip(0))


@pytest.mark.parametrize("shape", [(2, 13, 17, 3), (1, 6, 5, 3), (1, 24, 20, 1)])
def test_forward_matches_reference(shape):
    a, b = _pair(*shape)
    ref = ref_ssim_map(a, b)
    assert _rel(ssim_map(a, b), ref) < 1e-5
    assert abs(ssim(a, b).item() - ref.mean().item()) < 1e-5
    assert _rel(ssim_map(a.double(), b.double()), ref) < 1e-12


def test_gradients_match_reference():
    a, b = _pair(2, 12, 15, 3)
    a32, b32 = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    ssim(a32, b32).backward()
    a64, b64 = a.double().requires_grad_(True), b.double().requires_grad_(True)
    ref_ssim_map(a64, b64).mean().backward()
    assert _rel(a32.grad, a64.grad) < 1e-4
    assert _rel(b32.grad, b64.grad) < 1e-4


@pytest.fixture
def one_thread():
    """gradcheck's ~1,000 tiny evaluations: intra-op threads only add wake-up waits (seconds on a
    busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_gradcheck_float64(one_thread):
    a, b = _pair(1, 5, 6, 3)
    a, b = a.double().requires_grad_(True), b.double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, y: ssim(x, y), (a, b))
    a, b = _pair(1, 9, 8, 3)
    a, b = a.double().requires_grad_(True), b.double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, y: l1_ssim_loss(x, y, 0.2), (a, b), fast_mode=True)


def test_known_answers():
    x = torch.rand(2, 32, 32, 3)
    assert abs(ssim(x, x).item() - 1.0) < 1e-5
    assert l1_ssim_loss(x, x).abs().item() < 1e-5
    noise = torch.randn_like(x)
    values = [ssim(x, (x + s * noise).clamp(0, 1)).item() for s in (0.02, 0.05, 0.1, 0.2, 0.4)]
    assert all(p > q for p, q in zip(values, values[1:])), values
    assert values[0] > 0.95 and values[-1] < 0.8
    # an unbatched image is the batch of one
    assert torch.allclose(ssim(x[0], x[1]), ssim(x[:1], x[1:]))
    # lam = 0 is L1; lam = 1 is 1 - SSIM
    y = torch.rand_like(x)
    assert torch.allclose(l1_ssim_loss(x, y, 0.0), (x - y).abs().mean())
    assert torch.allclose(l1_ssim_loss(x, y, 1.0), 1 - ssim(x, y))
    assert torch.allclose(l1_ssim_loss(x, y), 0.8 * (x - y).abs().mean() + 0.2 * (1 - ssim(x, y)))
    # PSNR of a known MSE
    assert abs(psnr(x, (x + 0.1).clamp(max=10)).mean().item() - 20.0) < 1e-4


def test_bad_inputs():
    x = torch.rand(1, 8, 8, 3)
    with pytest.raises(ValueError, match="a and b"):
        ssim(x, torch.rand(1, 8, 9, 3))
    with pytest.raises(ValueError, match="a expected shape"):
        ssim(torch.rand(8, 3), torch.rand(8, 3))
    with pytest.raises(TypeError, match="b expected a floating"):
        ssim(x, (x * 255).to(torch.uint8))
