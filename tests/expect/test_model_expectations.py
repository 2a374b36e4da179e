"""derive_expectations on real models built from small configs (random weights, no downloads)."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
import torch.nn as nn

from rangewatch.expect.conventions import get_convention, list_conventions
from rangewatch.expect.models import HF_MODEL_TYPES, derive_expectations, latent_convention_for
from rangewatch.expect.transforms import predict_transform



TINY_VIT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)


def tiny_vae(**kw):
    diffusers = pytest.importorskip("diffusers")
    cfg = dict(
        block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        latent_channels=4, norm_num_groups=8, sample_size=32,
    )
    cfg.update(kw)
    return diffusers.AutoencoderKL(**cfg)


class Holder(nn.Module):
    def __init__(self, **mods):
        super().__init__()
        for k, v in mods.items():
            setattr(self, k, v)


def check_keys_are_modules(root: nn.Module, exps: dict) -> None:
    modules = dict(root.named_modules())
    for key, exp in exps.items():
        path, side = key.rsplit(":", 1)
        assert path in modules, key
        assert side in ("input", "output", "latent")
        assert exp.origin == "model"
        assert exp.conv.name == exp.convention


# ---------------------------------------------------------------------------- diffusers
def test_autoencoder_kl_sd15_default():
    root = Holder(vae=tiny_vae())
    exps = derive_expectations(root)
    check_keys_are_modules(root, exps)
    assert set(exps) == {"vae.encoder:input", "vae.decoder:output", "vae:latent"}
    assert exps["vae.encoder:input"].convention == "symmetric" and exps["vae.encoder:input"].target == "input"
    assert exps["vae.decoder:output"].convention == "symmetric" and exps["vae.decoder:output"].target == "output"
    lat = exps["vae:latent"]
    assert lat.convention == "sd15_latent" and lat.target == "output"
    assert "scaling_factor=0.18215" in lat.source and "AutoencoderKL" in lat.source


def test_encoder_key_sees_encode_and_forward():
    """The documented tap, "<vae>.encoder:input", fires for vae.encode() and vae() alike."""
    vae = tiny_vae()
    root = Holder(vae=vae)
    exps = derive_expectations(root)
    seen = []
    mod = dict(root.named_modules())["vae.encoder"]
    h = mod.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        vae.encode(x)
        vae(x)
    h.remove()
    assert "vae.encoder:input" in exps and len(seen) == 2


@pytest.mark.parametrize(
    "kw,expected",
    [
        (dict(scaling_factor=0.13025), "sdxl_latent"),
        (dict(scaling_factor=1.5305, shift_factor=0.0609, latent_channels=16), "sd3_latent"),
        (dict(scaling_factor=0.3611, shift_factor=0.1159, latent_channels=16), "flux_latent"),
    ],
)
def test_autoencoder_kl_latent_families(kw, expected):
    exps = derive_expectations(Holder(vae=tiny_vae(**kw)))
    assert exps["vae:latent"].convention == expected
    assert exps["vae.encoder:input"].convention == "symmetric"


def test_autoencoder_kl_custom_latent_carried_not_registered():
    # Playground v2.5-style: scale 0.5 with per-channel latents mean/std
    lm, ls = [-1.6574, 1.886, -1.383, 2.5155], [8.4927, 5.9022, 6.5498, 5.2299]
    before = list_conventions()
    exps = derive_expectations(Holder(vae=tiny_vae(scaling_factor=0.5, latents_mean=lm, latents_std=ls)))
    name = exps["vae:latent"].convention
    assert name.startswith("latent_s0p5_c4_lm")
    conv = exps["vae:latent"].conv  # the expectation carries the convention: reading a config registers nothing
    assert list_conventions() == before and name not in list_conventions()
    assert conv.name == name and conv.kind == "latent" and conv.scale == 0.5 and conv.channels == 4
    assert conv.latents_mean == tuple(lm) and conv.latents_std == tuple(ls)
    # deterministic
    assert derive_expectations(Holder(vae=tiny_vae(scaling_factor=0.5, latents_mean=lm, latents_std=ls)))["vae:latent"].convention == name
    # scale only, SD-like channels but a different scale
    exps = derive_expectations(Holder(vae=tiny_vae(scaling_factor=0.25)))
    assert exps["vae:latent"].convention == "latent_s0p25_c4"
    # a 4-channel VAE with SD3's numbers is not SD3
    assert latent_convention_for(1.5305, 0.0609, 4).name == "latent_s1p5305_sh0p0609_c4"
    assert latent_convention_for(0.18215, None, 4) is get_convention("sd15_latent")  # a catalogue match is the catalogue's


def test_vae_as_root():
    exps = derive_expectations(tiny_vae())
    assert set(exps) == {"encoder:input", "decoder:output", ":latent"}


def test_autoencoder_tiny_has_no_latent():
    diffusers = pytest.importorskip("diffusers")
    taesd = diffusers.AutoencoderTiny(
        encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8), num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1)
    )
    notes: list[str] = []
    exps = derive_expectations(Holder(taesd=taesd), notes=notes)
    assert exps["taesd.encoder:input"].convention == "symmetric"
    assert "taesd:latent" not in exps
    assert any("AutoencoderTiny" in n for n in notes)


# ---------------------------------------------------------------------------- timm
def test_timm_resnet18_imagenet():
    timm = pytest.importorskip("timm")
    root = Holder(backbone=timm.create_model("resnet18", pretrained=False))
    exps = derive_expectations(root)
    assert list(exps) == ["backbone:input"]  # nothing inside the backbone
    e = exps["backbone:input"]
    assert e.convention == "imagenet"
    assert e.source.startswith("timm pretrained_cfg of backbone (resnet18")


@pytest.mark.parametrize("name,kw", [("inception_v3", dict(num_classes=10)), ("vit_tiny_patch16_224", dict(depth=1))])
def test_timm_inception_style_symmetric(name, kw):
    timm = pytest.importorskip("timm")
    with torch.device("meta"):  # metadata only: skip allocating and initialising the weights
        m = timm.create_model(name, pretrained=False, **kw)
    assert tuple(m.pretrained_cfg["mean"]) == (0.5, 0.5, 0.5)  # IMAGENET_INCEPTION_MEAN
    assert derive_expectations(Holder(enc=m))["enc:input"].convention == "symmetric"


def test_timm_custom_mean_std_carries_a_shared_name():
    timm = pytest.importorskip("timm")
    from torchvision import transforms as T

    before = list_conventions()
    mean, std = (0.1, 0.2, 0.3), (0.3, 0.3, 0.3)
    m = timm.create_model("resnet10t", pretrained=False, pretrained_cfg_overlay=dict(mean=mean, std=std))
    exps = derive_expectations(Holder(backbone=m))
    name = exps["backbone:input"].convention
    assert name == "norm_m0p1-0p2-0p3_s0p3"
    conv = exps["backbone:input"].conv  # carried by the expectation, not registered
    assert conv.mean == mean and conv.std == (0.3,) * 3
    # a dataset normalising with the same constants gets the same name and convention, so the two compare equal
    pred = predict_transform(T.Compose([T.ToTensor(), T.Normalize(mean, std)]))
    assert pred.convention == name and (pred.conv.mean, pred.conv.std) == (conv.mean, conv.std)
    assert list_conventions() == before


# ---------------------------------------------------------------------------- transformers
def test_transformers_vision_models_by_model_type():
    tr = pytest.importorskip("transformers")
    root = Holder(
        image_encoder=tr.CLIPVisionModelWithProjection(tr.CLIPVisionConfig(**TINY_VIT)),
        siglip=tr.SiglipVisionModel(tr.SiglipVisionConfig(**TINY_VIT)),
        dino=tr.Dinov2Model(tr.Dinov2Config(**TINY_VIT)),
        vit=tr.ViTModel(tr.ViTConfig(**TINY_VIT)),
        convnext=tr.ConvNextModel(tr.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)),
    )
    exps = derive_expectations(root)
    check_keys_are_modules(root, exps)
    got = {k: e.convention for k, e in exps.items()}
    assert got == {
        "image_encoder:input": "clip",
        "siglip:input": "symmetric",
        "dino:input": "imagenet",
        "vit:input": "symmetric",
        "convnext:input": "imagenet",
    }
    assert "model_type 'dinov2'" in exps["dino:input"].source


def test_transformers_composite_model_keys_the_vision_tower():
    tr = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip = tr.CLIPModel(
            tr.CLIPConfig(
                vision_config=TINY_VIT,
                text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=100,
                                 bos_token_id=0, eos_token_id=1, pad_token_id=1),
            )
        )
    exps = derive_expectations(Holder(clip=clip))
    assert {k: e.convention for k, e in exps.items()} == {"clip.vision_model:input": "clip"}


def test_transformers_processor_given_and_attached():
    tr = pytest.importorskip("transformers")
    from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    dino = tr.Dinov2Model(tr.Dinov2Config(**TINY_VIT))
    root = Holder(dino=dino)
    # the processor given wins over the model type (here BitImageProcessor's class default: CLIP constants)
    exps = derive_expectations(root, image_processors={"dino": tr.BitImageProcessor()})
    assert exps["dino:input"].convention == "clip"
    assert "BitImageProcessor" in exps["dino:input"].source and "image_processors['dino']" in exps["dino:input"].source
    exps = derive_expectations(root, image_processors={"dino": tr.BitImageProcessor(image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD)})
    assert exps["dino:input"].convention == "imagenet"
    # a processor kept on the model
    clipv = tr.CLIPVisionModel(tr.CLIPVisionConfig(**TINY_VIT))
    clipv.image_processor = tr.CLIPImageProcessor(do_normalize=False)
    exps = derive_expectations(Holder(image_encoder=clipv))
    assert exps["image_encoder:input"].convention == "unit"
    assert "image_encoder.image_processor" in exps["image_encoder:input"].source
    # processors apply to any module, and unknown paths are reported
    notes: list[str] = []
    exps = derive_expectations(Holder(enc=nn.Conv2d(3, 8, 3)), {"enc": tr.SiglipImageProcessor(), "nope": tr.CLIPImageProcessor()}, notes=notes)
    assert exps == {"enc:input": exps["enc:input"]} and exps["enc:input"].convention == "symmetric"
    assert any("nope" in n for n in notes)


def test_transformers_custom_processor_constants():
    tr = pytest.importorskip("transformers")
    before = list_conventions()
    proc = tr.CLIPImageProcessor(image_mean=[0.45, 0.45, 0.45], image_std=[0.27, 0.27, 0.27])
    exps = derive_expectations(Holder(enc=tr.CLIPVisionModel(tr.CLIPVisionConfig(**TINY_VIT))), {"enc": proc})
    name = exps["enc:input"].convention
    assert name == "norm_m0p45_s0p27"
    assert exps["enc:input"].conv.bounds(3)[0][0] == pytest.approx(-0.45 / 0.27)
    assert list_conventions() == before


def test_model_type_table_is_consistent_with_installed_processors():
    """Where a model type's default follows a processor's class default, check it against transformers' source."""
    tr = pytest.importorskip("transformers")
    for proc_cls, model_type in [("CLIPImageProcessor", "clip"), ("SiglipImageProcessor", "siglip"), ("ViTImageProcessor", "vit")]:
        proc = getattr(tr, proc_cls)()
        assert predict_transform(proc).convention == HF_MODEL_TYPES[model_type][0], proc_cls


# ---------------------------------------------------------------------------- open_clip
def test_open_clip_visual():
    open_clip = pytest.importorskip("open_clip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = open_clip.create_model("ViT-B-32", pretrained=None)
        sym = open_clip.create_model("ViT-B-32", pretrained=None, force_preprocess_cfg=dict(mean=(0.5,) * 3, std=(0.5,) * 3))
    exps = derive_expectations(Holder(clip=model, clip2=sym))
    assert {k: e.convention for k, e in exps.items()} == {"clip.visual:input": "clip", "clip2.visual:input": "symmetric"}
    assert "preprocess_cfg" in exps["clip.visual:input"].source


def test_open_clip_tiny_timm_tower_outermost_only():
    open_clip = pytest.importorskip("open_clip")
    pytest.importorskip("timm")
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    model = CLIP(
        embed_dim=16,
        vision_cfg=CLIPVisionCfg(timm_model_name="vit_tiny_patch16_224", timm_model_pretrained=False, image_size=32, timm_pool="avg", timm_proj="linear"),
        text_cfg=CLIPTextCfg(context_length=8, vocab_size=64, width=32, heads=2, layers=1),
    )
    exps = derive_expectations(Holder(clip=model))
    # the timm trunk inside (pretrained_cfg mean 0.5) is not derived again: the open_clip tower wins
    assert list(exps) == ["clip.visual:input"]
    assert exps["clip.visual:input"].convention == "clip"
    assert "PreprocessCfg default" in exps["clip.visual:input"].source


# ---------------------------------------------------------------------------- the IP-Adapter case (multi-norm)
def test_multi_norm_pipeline():
    tr = pytest.importorskip("transformers")
    timm = pytest.importorskip("timm")
    root = Holder(
        vae=tiny_vae(scaling_factor=0.13025),
        image_encoder=tr.CLIPVisionModelWithProjection(tr.CLIPVisionConfig(**TINY_VIT)),
        dino=tr.Dinov2Model(tr.Dinov2Config(**TINY_VIT)),
        backbone=timm.create_model("resnet18", pretrained=False),
        head=nn.Linear(4, 4),
    )
    got = {k: e.convention for k, e in derive_expectations(root).items()}
    assert got == {
        "vae.encoder:input": "symmetric",
        "vae.decoder:output": "symmetric",
        "vae:latent": "sdxl_latent",
        "image_encoder:input": "clip",
        "dino:input": "imagenet",
        "backbone:input": "imagenet",
    }


def test_plain_modules_give_nothing():
    assert derive_expectations(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())) == {}
    with pytest.raises(TypeError):
        derive_expectations("not a module")  # type: ignore[arg-type]


def test_works_without_optional_libraries(monkeypatch):
    """No module (nor a library's reader file) imports diffusers, timm, transformers or open_clip at import
    time, and with them unimportable both still work (their rules are skipped)."""
    import ast
    import pathlib

    import rangewatch.expect.models as me
    import rangewatch.expect.transforms as ti
    from rangewatch.integrations import compvis, diffusers, open_clip, timm, transformers

    optional = {"diffusers", "timm", "transformers", "open_clip"}
    for mod in (me, ti, diffusers, compvis, timm, transformers, open_clip):
        tree = ast.parse(pathlib.Path(mod.__file__).read_text())
        for node in tree.body:  # top-level statements only: lazy imports live inside functions
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not {n.split(".")[0] for n in names} & optional, (mod.__name__, names)

    for name in optional:
        monkeypatch.setitem(sys.modules, name, None)  # any import of it now fails
    from torchvision import transforms as T

    assert derive_expectations(nn.Sequential(nn.Conv2d(3, 3, 1))) == {}
    assert predict_transform(T.Compose([T.ToTensor(), T.Normalize(0.5, 0.5)])).convention == "symmetric"
