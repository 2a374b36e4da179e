import numpy as np
import pytest
import torch
from torchvision.transforms import v2

import rangewatch
from rangewatch import get_convention, list_conventions, register_convention
from rangewatch.expect.conventions import UnknownConventionError
from rangewatch.checks.fixes import conversion_fix

# published constants (torchvision transforms/_presets.py, open_clip constants.py), hand-computed (0-mean)/std and (1-mean)/std
IMAGENET_BOUNDS = ((-2.1179, -2.0357, -1.8044), (2.2489, 2.4286, 2.6400))
CLIP_BOUNDS = ((-1.7923, -1.7521, -1.4802), (1.9303, 2.0749, 2.1459))


def test_catalogue_has_required_names():
    names = set(list_conventions())
    for n in ["uint8", "float255", "unit", "symmetric", "imagenet", "clip", "sd15_latent", "sdxl_latent", "sd3_latent", "flux_latent"]:
        assert n in names
    assert set(list_conventions("latent")) == {"sd15_latent", "sdxl_latent", "sd3_latent", "flux_latent",
                                               "wan21_latent", "mochi_latent", "hunyuanvideo_latent"}


@pytest.mark.parametrize("name,bounds", [("imagenet", IMAGENET_BOUNDS), ("clip", CLIP_BOUNDS)])
def test_published_bounds(name, bounds):
    lo, hi = get_convention(name).bounds(3)
    np.testing.assert_allclose(lo, bounds[0], atol=1e-4)
    np.testing.assert_allclose(hi, bounds[1], atol=1e-4)


def test_simple_bounds():
    assert get_convention("symmetric").bounds(3) == ((-1.0,) * 3, (1.0,) * 3)
    assert get_convention("unit").bounds(1) == ((0.0,), (1.0,))
    lo, hi = get_convention("float255").bounds(4)
    assert lo == (0.0,) * 4 and np.allclose(hi, 255)


def test_from_unit_matches_torchvision_normalize():
    u = torch.rand(2, 3, 8, 8)
    for name in ["imagenet", "clip", "symmetric"]:
        c = get_convention(name)
        ref = v2.Normalize(mean=list(c.mean_for(3)), std=list(c.std_for(3)))(u)
        torch.testing.assert_close(c.from_unit(u), ref)
        torch.testing.assert_close(c.to_unit(ref), u, atol=1e-6, rtol=0)
    x8 = get_convention("uint8").from_unit(u)
    assert x8.dtype == torch.uint8
    np.testing.assert_array_equal(x8.numpy(), np.clip(np.round(u.numpy() * 255), 0, 255).astype(np.uint8))


def test_to_display_clamps_and_handles_nan():
    x = torch.tensor([[-3.0, 0.0, 3.0, float("nan")]]).reshape(1, 1, 1, 4)
    d = get_convention("symmetric").to_display(x)
    assert d.flatten().tolist() == [0.0, 0.5, 1.0, 0.0]


def test_channel_expansion_gray_and_rgba():
    c = get_convention("imagenet")
    assert c.mean_for(1) == pytest.approx((sum(c.mean) / 3,))
    assert len(c.mean_for(4)) == 4
    with pytest.raises(ValueError, match="cannot apply"):
        c.mean_for(7)


def test_unknown_name_lists_known():
    with pytest.raises(UnknownConventionError) as e:
        get_convention("imagenett")
    msg = str(e.value)
    assert "imagenett" in msg and "imagenet" in msg and "clip" in msg
    with pytest.raises(KeyError):
        get_convention("nope")


def test_register_forms(registers_conventions):
    c = register_convention("test_meanstd", mean=[0.4, 0.4, 0.4], std=[0.2, 0.2, 0.2], overwrite=True)
    assert get_convention("test_meanstd") is c and c.kind == "pixel"
    np.testing.assert_allclose(c.bounds(3)[0], [-2.0] * 3)
    b = register_convention("test_bounds", bounds=(0.0, 4.0), overwrite=True)
    np.testing.assert_allclose(b.bounds(3)[1], [4.0] * 3)
    torch.testing.assert_close(b.from_unit(torch.ones(1, 3, 1, 1)), torch.full((1, 3, 1, 1), 4.0))
    lat = register_convention("test_latent", scale=0.5, shift=0.1, channels=4, overwrite=True)
    assert lat.kind == "latent" and lat.scale == 0.5 and lat.channels == 4
    with pytest.raises(ValueError, match="already registered"):
        register_convention("test_latent", scale=0.5)
    with pytest.raises(ValueError, match="exactly one"):
        register_convention("bad", mean=[0.5], std=[0.5], scale=1.0)
    with pytest.raises(ValueError, match="std must be positive"):
        register_convention("bad2", mean=[0.5], std=[0.0])


def test_unregister():
    from rangewatch.expect.conventions import unregister_convention

    register_convention("test_gone", mean=[0.3], std=[0.2])
    unregister_convention("test_gone")
    assert "test_gone" not in list_conventions()
    with pytest.raises(ValueError, match="built-in"):
        unregister_convention("clip")


def test_latent_to_rgb_matches_numpy():
    c = get_convention("sdxl_latent")
    z = torch.randn(2, 4, 5, 6)
    rgb = c.latent_to_rgb(z)
    f = np.array(c.latent_rgb)
    ref = np.einsum("nchw,ck->nkhw", z.numpy().astype(np.float64), f) + np.array(c.latent_rgb_bias)[None, :, None, None]
    np.testing.assert_allclose(rgb.numpy(), ref, atol=1e-5)
    assert get_convention("flux_latent").channels == 16 and len(get_convention("flux_latent").latent_rgb) == 16
    with pytest.raises(ValueError, match="expects 4 latent channels"):
        c.latent_to_rgb(torch.randn(1, 16, 2, 2))


def test_conversion_fix_text():
    assert "x * 2 - 1" in conversion_fix("unit", "symmetric", "vae.encoder")
    assert "vae.encoder" in conversion_fix("unit", "symmetric", "vae.encoder")
    assert "Normalize(mean=CLIP_MEAN, std=CLIP_STD)" in conversion_fix("imagenet", "clip")
    assert "IMAGENET" in conversion_fix("clip", "imagenet")


def test_public_api():
    for n in ["Convention", "get_convention", "list_conventions", "register_convention", "RangeStats", "infer_convention"]:
        assert hasattr(rangewatch, n)
