"""SSIM and the photometric loss of 3D Gaussian splatting (L1 + D-SSIM), by separable convolutions.

Images are channels-last, as the rasterizer and :meth:`ffavatar.avatar.Avatar.render` return them:
``[B,H,W,C]`` (or one ``[H,W,C]`` image), float. SSIM follows the 3DGS papers' ``ssim``: an 11x11
Gaussian window (sigma 1.5) normalized to sum 1, zero padding ("same" size), C1 = 0.01^2,
C2 = 0.03^2 (a dynamic range of 1), the mean of the SSIM map over pixels, channels and images.
The window is separable: one grouped ``conv2d`` with a [1,k] kernel then one with a [k,1] kernel
over the five maps (a, b, a^2, b^2, ab) at once. Differentiable by autograd on any device.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["gaussian_window", "ssim", "ssim_map", "l1_ssim_loss", "psnr"]

C1 = 0.01 ** 2
C2 = 0.03 ** 2


def gaussian_window(size: int = 11, sigma: float = 1.5, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """[size] 1D Gaussian weights centred on ``size // 2``, summing to 1."""
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-x * x / (2.0 * sigma * sigma))
    return (g / g.sum()).to(dtype=dtype, device=device)


def _check_pair(a: torch.Tensor, b: torch.Tensor, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{where}: {name} expected a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{where}: {name} expected a floating dtype, got {t.dtype}")
        if t.dim() not in (3, 4):
            raise ValueError(f"{where}: {name} expected shape [B,H,W,C] or [H,W,C] (channels last), "
                             f"got {list(t.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"{where}: a and b must have the same shape, got {list(a.shape)} and {list(b.shape)}")
    if a.device != b.device:
        raise ValueError(f"{where}: a is on {a.device} but b on {b.device}")
    if a.dim() == 3:
        a, b = a[None], b[None]
    return a, b


def ssim_map(a: torch.Tensor, b: torch.Tensor, window_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """The per-pixel SSIM map [B,H,W,C] of ``a`` and ``b`` ([B,H,W,C] or [H,W,C], channels last)."""
    squeeze = a.dim() == 3
    a, b = _check_pair(a, b, "ssim_map")
    dt = torch.promote_types(a.dtype, b.dtype)
    B, H, W, C = a.shape
    x = a.to(dt).permute(0, 3, 1, 2)                     # [B,C,H,W]
    y = b.to(dt).permute(0, 3, 1, 2)
    stack = torch.cat([x, y, x * x, y * y, x * y], 1)    # [B,5C,H,W]
    g = gaussian_window(window_size, sigma, dtype=dt, device=a.device)
    k, p = window_size, window_size // 2
    ch = 5 * C
    s = F.conv2d(stack, g.view(1, 1, 1, k).expand(ch, 1, 1, k), padding=(0, p), groups=ch)
    s = F.conv2d(s, g.view(1, 1, k, 1).expand(ch, 1, k, 1), padding=(p, 0), groups=ch)
    mu_x, mu_y, e_xx, e_yy, e_xy = s.split(C, 1)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    var_x, var_y, cov = e_xx - mu_xx, e_yy - mu_yy, e_xy - mu_xy
    m = ((2 * mu_xy + C1) * (2 * cov + C2)) / ((mu_xx + mu_yy + C1) * (var_x + var_y + C2))
    m = m.permute(0, 2, 3, 1)
    return m[0] if squeeze else m


def ssim(a: torch.Tensor, b: torch.Tensor, window_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM (a 0-dim tensor) of images ``a`` and ``b``: [B,H,W,C] or [H,W,C], channels last,
    values in [0,1]; 1 for identical images. Differentiable w.r.t. both."""
    return ssim_map(a, b, window_size, sigma).mean()


def l1_ssim_loss(a: torch.Tensor, b: torch.Tensor, lam: float = 0.2) -> torch.Tensor:
    """``(1 - lam) * L1(a, b) + lam * (1 - SSIM(a, b))`` (3DGS's photometric loss, lam = 0.2);
    images [B,H,W,C] or [H,W,C], channels last."""
    a2, b2 = _check_pair(a, b, "l1_ssim_loss")
    l1 = (a2 - b2).abs().mean()
    if lam == 0:
        return l1
    return (1.0 - lam) * l1 + lam * (1.0 - ssim(a2, b2))


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[B] PSNR in dB of each image pair (values in [0,1]; [B,H,W,C] or [H,W,C] -> [1])."""
    a2, b2 = _check_pair(a, b, "psnr")
    mse = (a2 - b2).double().pow(2).flatten(1).mean(1)
    return -10.0 * torch.log10(mse.clamp_min(1e-20))

