"""DINOv2-layout ViT encoder vs timm and HF transformers (random weights, no download), at an input
size different from the pretraining grid (position-embedding resampling), fp32 CPU, 1e-5 relative."""
import sys

import pytest
import torch
import torch.nn.functional as F

from ffavatar.nn.encoder import ViTConfig, ViTEncoder
from ffavatar.nn.weights import (EncoderWeightsError, detect_naming, infer_vit_config,
                                 load_encoder_weights)


def _shim_torchvision():
    """PyPI's torchvision wheels are CUDA builds: beside the CPU torch their C ops do not load, and
    torchvision 0.28 then fails at import, registering fake kernels for two ops it never defined.
    Define those two schemas (never called) so timm / transformers import; a no-op on a good install."""
    global _TV_LIB
    try:
        import torchvision  # noqa: F401
        return
    except RuntimeError:
        pass
    _TV_LIB = torch.library.Library("torchvision", "DEF")
    _TV_LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TV_LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


_TV_LIB = None
_shim_torchvision()
timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

WIDTH, HEADS, DEPTH, GRID = 64, 2, 2, 4          # pretraining size 56 px
SIZE = (70, 84)                                  # test size: 5 x 6 patches (resampled, non-square)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _perturb(model):
    """Random LayerScale / norms / tokens (fresh init leaves them trivial, which hides mistakes)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(s in name for s in ("gamma", "lambda1", "norm", "cls", "reg", "register")):
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if "weight" in name else 0.0))
    return model.eval()


def _images():
    return torch.randn(2, 3, *SIZE)


def _ours(sd, naming=None):
    cfg = infer_vit_config(sd, heads=HEADS, naming=naming)
    assert (cfg.width, cfg.depth, cfg.grid) == (WIDTH, DEPTH, GRID)
    enc = ViTEncoder(cfg).eval()
    used = load_encoder_weights(enc, sd, naming=naming)
    return enc, used


def _timm(reg: bool):
    name = "vit_small_patch14_reg4_dinov2" if reg else "vit_small_patch14_dinov2"
    m = timm.create_model(name, pretrained=False, img_size=GRID * 14, depth=DEPTH, embed_dim=WIDTH,
                          num_heads=HEADS, dynamic_img_size=True, num_classes=0)
    return _perturb(m)


@pytest.mark.parametrize("reg", [False, True])
def test_timm_features_match(reg):
    ref = _timm(reg)
    sd = ref.state_dict()
    assert detect_naming(sd) == "timm"
    enc, _ = _ours(sd)
    assert enc.config.registers == (4 if reg else 0)
    x = _images()
    with torch.no_grad():
        want = ref.forward_features(x)                 # [B,1+R+N,C], normalized
        got = enc(x)
    assert got.shape == want.shape == (2, 1 + (4 if reg else 0) + 30, WIDTH)
    assert _rel(got[:, 0], want[:, 0]) < 1e-5            # class token
    assert _rel(got[:, enc.num_prefix_tokens:], want[:, enc.num_prefix_tokens:]) < 1e-5  # patches
    assert _rel(got, want) < 1e-5


def _timm_to_release(sd):
    """timm -> DINOv2-release naming (the inverse of timm's own _convert_dinov2)."""
    out = {"mask_token": torch.randn(1, WIDTH)}
    for k, v in sd.items():
        if k == "reg_token":
            out["register_tokens"] = v
        elif k == "pos_embed" and "reg_token" in sd:   # release pos_embed covers the class token
            out[k] = torch.cat([torch.zeros(1, 1, WIDTH), v], 1)
        else:
            out[k] = v
    return out


def _release_pos(pos, gh, gw):
    """DINOv2 release interpolate_pos_encoding (scale factor with offset 0.1, no antialias)."""
    m = GRID
    patch = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, scale_factor=((gh + 0.1) / m, (gw + 0.1) / m), mode="bicubic")
    return torch.cat([pos[:, :1], patch.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)], 1)


@pytest.mark.parametrize("reg", [False, True])
def test_release_naming(reg):
    ref = _timm(reg)
    rel = _timm_to_release(ref.state_dict())
    assert detect_naming(rel) == "dinov2"
    enc, used = _ours(rel)
    assert used == "dinov2" and enc.config.pos_offset == 0.1 and not enc.config.pos_antialias
    x = torch.randn(2, 3, GRID * 14, GRID * 14)        # native size: same numbers as timm
    with torch.no_grad():
        assert _rel(enc(x), ref.forward_features(x)) < 1e-5
        # at another size the release's own resampling formula is used
        pos = _release_pos(enc.pos_embed, 5, 6)
        assert _rel(enc.interpolate_pos_embed(5, 6), pos) < 1e-6


def _hf(reg: bool):
    kw = dict(hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
              intermediate_size=4 * WIDTH, image_size=GRID * 14, patch_size=14)
    if reg:
        try:
            from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel
        except ImportError:
            pytest.skip("this transformers has no Dinov2WithRegistersModel")
        m = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=4, **kw))
    else:
        from transformers import Dinov2Config, Dinov2Model
        m = Dinov2Model(Dinov2Config(**kw))
    return _perturb(m)


@pytest.mark.parametrize("reg", [False, True])
def test_hf_features_match(reg):
    ref = _hf(reg)
    sd = ref.state_dict()
    assert detect_naming(sd) == "hf"
    enc, _ = _ours(sd)
    x = _images()
    with torch.no_grad():
        want = ref(pixel_values=x).last_hidden_state
        got = enc(x)
    assert got.shape == want.shape
    assert _rel(got[:, 0], want[:, 0]) < 1e-5
    assert _rel(got[:, enc.num_prefix_tokens:], want[:, enc.num_prefix_tokens:]) < 1e-5


def test_hf_legacy_names():
    """transformers 4.x names (attention.attention.query / attention.output.dense) load too."""
    sd = _hf(False).state_dict()
    legacy = {}
    for k, v in sd.items():
        for new, old in (("attention.q_proj", "attention.attention.query"),
                         ("attention.k_proj", "attention.attention.key"),
                         ("attention.v_proj", "attention.attention.value"),
                         ("attention.o_proj", "attention.output.dense")):
            k = k.replace(new, old)
        legacy[k] = v
    a, _ = _ours(sd)
    b, _ = _ours(legacy)
    x = _images()
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_missing_and_unexpected_keys_listed(tmp_path):
    from safetensors.torch import save_file
    sd = {k: v.contiguous() for k, v in _timm(False).state_dict().items()}
    sd.pop("blocks.1.ls2.gamma")
    sd["blocks.0.attn.extra"] = torch.zeros(3)
    path = tmp_path / "enc.safetensors"
    save_file(sd, str(path))
    enc = ViTEncoder(ViTConfig(width=WIDTH, depth=DEPTH, heads=HEADS, grid=GRID))
    with pytest.raises(EncoderWeightsError) as exc:
        load_encoder_weights(enc, path)
    msg = str(exc.value)
    assert "blocks.1.ls2.gamma" in msg and "blocks.0.attn.extra" in msg and str(path) in msg
    # a registers file into an encoder without registers: the register tokens are unexpected
    sd_reg = _timm(True).state_dict()
    with pytest.raises(EncoderWeightsError, match="register_tokens"):
        load_encoder_weights(enc, sd_reg)
    # wrong depth: every key of the extra block is listed
    deep = ViTEncoder(ViTConfig(width=WIDTH, depth=DEPTH + 1, heads=HEADS, grid=GRID))
    with pytest.raises(EncoderWeightsError, match=r"blocks\.2\.attn\.qkv\.weight"):
        load_encoder_weights(deep, _timm(False).state_dict())


def test_pth_file_round_trip(tmp_path):
    ref = _timm(False)
    path = tmp_path / "enc.pth"
    torch.save({"model": ref.state_dict()}, path)
    enc = ViTEncoder(ViTConfig(width=WIDTH, depth=DEPTH, heads=HEADS, grid=GRID)).eval()
    assert load_encoder_weights(enc, path) == "timm"
    x = _images()
    with torch.no_grad():
        assert _rel(enc(x), ref.forward_features(x)) < 1e-5
