from collections import namedtuple

import torch
from torch import nn

from rangewatch.taps.batches import find_images, image_channel_dim
from rangewatch.taps.hooks import ModuleTaps, parse_tap_key


def paths(batch, **kw):
    return [(f.path, f.channel_dim) for f in find_images(batch, **kw)]


def test_names_by_path():
    img = torch.rand(2, 3, 16, 16)
    assert paths(img) == [("batch", 1)]
    assert paths((img, torch.tensor([1, 2]))) == [("batch[0]", 1)]
    assert paths({"image": img, "cond": {"pixels": img}}) == [("batch.image", 1), ("batch.cond.pixels", 1)]
    NT = namedtuple("NT", "lq gt")
    assert paths(NT(img, img)) == [("batch.lq", 1), ("batch.gt", 1)]


def test_skips_non_images():
    batch = {
        "input_ids": torch.randint(0, 49408, (2, 77)),
        "attention_mask": torch.ones(2, 77, dtype=torch.long),
        "mask": torch.rand(2, 1, 16, 16),  # image-shaped but a mask: skipped by name
        "label": torch.tensor([0, 1]),
        "scale": torch.tensor(0.5),
        "bool_mask": torch.rand(2, 1, 16, 16) > 0.5,
        "tiny": torch.rand(2, 3, 2, 2),
        "features": torch.rand(2, 768),
        "empty": torch.empty(0, 3, 16, 16),
        "image": torch.rand(2, 3, 16, 16),
    }
    assert paths(batch) == [("batch.image", 1)]


def test_layouts_and_dtypes():
    assert image_channel_dim(torch.rand(2, 1, 16, 16)) == 1
    assert image_channel_dim(torch.rand(2, 4, 16, 16)) == 1
    assert image_channel_dim(torch.randint(0, 255, (2, 16, 16, 3), dtype=torch.uint8)) == 3  # NHWC uint8
    assert image_channel_dim(torch.rand(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)) == 1
    assert image_channel_dim(torch.rand(2, 8, 3, 16, 16)) == 2  # (N, T, C, H, W) video
    assert image_channel_dim(torch.rand(2, 3, 8, 16, 16)) == 1  # (N, C, T, H, W)
    assert image_channel_dim(torch.rand(2, 3, 16, 16).half()) == 1
    assert image_channel_dim(torch.rand(2, 3, 16, 16).bfloat16()) == 1
    assert image_channel_dim(torch.rand(16, 16)) is None
    assert image_channel_dim(torch.rand(3, 16, 16)) is None
    assert image_channel_dim(torch.randint(0, 9, (2, 3, 16, 16))) is None  # int64


def test_keys_restrict():
    img = torch.rand(2, 3, 16, 16)
    assert paths({"lq": img, "gt": img}, keys=["lq"]) == [("batch.lq", 1)]
    assert paths({"lq": img, "gt": img}, keys=["batch.gt"]) == [("batch.gt", 1)]


def test_parse_tap_key():
    assert parse_tap_key("vae.encoder") == ("vae.encoder", "input")
    assert parse_tap_key("decoder:output") == ("decoder", "output")


def test_module_taps_see_and_do_not_change():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    seen = []
    taps = ModuleTaps(lambda name, t: seen.append((name, t.shape)))
    x = torch.rand(1, 3, 8, 8)
    ref = model(x)
    assert taps.attach(model, {"0": {"input", "output"}, "nope": {"input"}}) == ["nope"]
    out = model(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert seen == [("0:input", torch.Size([1, 3, 8, 8])), ("0:output", torch.Size([1, 4, 6, 6]))]
    taps.detach()
    model(x)
    assert len(seen) == 2
