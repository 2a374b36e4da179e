"""Loss networks and metrics (rangewatch.integrations): real objects from lpips, torchmetrics, basicsr,
torchvision (random weights: nothing can be downloaded here), in real Lightning runs.

The data are real photographs (scikit-image); each wrong-range call must be caught at its first call with
the fix in the library's own terms, the correct call must stay silent, and watching must not change a
single bit of any result.
"""

from __future__ import annotations

import copy
import sys
import types

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.functional import peak_signal_noise_ratio as tm_psnr  # bound at import, as user code does

from helpers import fit as quiet
from helpers.photos import as_tensor
from helpers.threads import one_thread
from rangewatch import LossWatch, RangeWatch, find_loss_networks, import_basicsr, infer_convention

lpips = pytest.importorskip("lpips")


_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


# ---------------------------------------------------------------------------- data and runs
def photos(n: int = 4, side: int = 32) -> torch.Tensor:
    """n real photos in [0,1], NCHW float (area-downscaled: the 0 and 255 pixels survive)."""
    names = ["astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "colorwheel"]
    out = []
    for name in names[:n]:
        t = as_tensor(name, max_side=4 * side).float().div(255)
        out.append(F.interpolate(t[None], size=(side, side), mode="area")[0] if t.shape[0] == 3 else t[:3])
    x = torch.stack(out)
    x[:, :, 0, 0], x[:, :, 0, 1] = 0.0, 1.0  # a black and a white pixel, as most photos have
    return x


def blurred(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")


def run(module: pl.LightningModule, callbacks: list, x: torch.Tensor, steps: int = 2, val: bool = False) -> pl.Trainer:
    gt = x
    loader = DataLoader(TensorDataset(blurred(gt), gt), batch_size=2)
    when = dict(limit_val_batches=1, val_check_interval=steps, check_val_every_n_epoch=None) if val else dict(limit_val_batches=0)
    return quiet.fit(module, loader, loader if val else None, callbacks=callbacks, max_steps=steps, devices=1, **when)


class Restorer(pl.LightningModule):
    """An image-restoration LightningModule, the way basicsr / CodeFormer-style code writes one: a
    residual net (zero-initialised, so at step 0 it returns its input) trained with L1 plus a loss
    network; ``to_loss`` maps the [0,1] photos to the range the training code feeds the loss."""

    def __init__(self, loss_net: nn.Module, call, to_loss=lambda t: t, metric_call=None):
        super().__init__()
        self.net = nn.Conv2d(3, 3, 3, padding=1)
        nn.init.zeros_(self.net.weight)
        nn.init.zeros_(self.net.bias)
        self.loss_net = loss_net
        self.call = call
        self.to_loss = to_loss
        self.metric_call = metric_call
        self.values: list[torch.Tensor] = []

    def forward(self, lq):
        return lq + self.net(lq)

    def training_step(self, batch, batch_idx):
        lq, gt = batch
        out = self(lq)
        extra = self.call(self.loss_net, self.to_loss(out), self.to_loss(gt))
        self.values.append(extra.detach().clone())
        return F.l1_loss(out, gt) + 0.1 * extra.mean()

    def validation_step(self, batch, batch_idx):
        if self.metric_call is not None:
            lq, gt = batch
            self.metric_call(self, self(lq), gt)

    def configure_optimizers(self):
        return torch.optim.SGD(self.net.parameters(), lr=0.01)


def mismatches(watch: RangeWatch) -> list:
    return [f for f in watch.findings if f.kind == "mismatch"]


def no_internal(watch: RangeWatch) -> None:
    assert [f for f in watch.findings if f.kind == "internal"] == []


def symmetric(t: torch.Tensor) -> torch.Tensor:
    return t * 2 - 1


def make_lpips() -> nn.Module:
    # linear layers: the calibrated weights shipped inside the lpips package; trunk: random (pnet_rand,
    # the torchvision ImageNet weights would need a download)
    torch.manual_seed(0)
    return lpips.LPIPS(pretrained=True, net="alex", pnet_rand=True, verbose=False)


# ---------------------------------------------------------------------------- lpips
@pytest.mark.slow
@pytest.mark.parametrize(
    "case, to_loss, normalize, fix",
    [
        ("correct [-1,1]", symmetric, False, None),
        ("correct [0,1] normalize=True", None, True, None),
        ("[0,1] without normalize", None, False, "normalize=True"),
        ("[-1,1] with normalize=True", symmetric, True, "drop normalize=True"),
    ],
)
def test_lpips_package_judged_per_call(case, to_loss, normalize, fix):
    x = photos()
    watch = RangeWatch()
    module = Restorer(make_lpips(), lambda net, a, b: net(a, b, normalize=normalize), to_loss or (lambda t: t))
    run(module, [watch], x)
    no_internal(watch)
    assert not module.loss_net._forward_pre_hooks  # removed at teardown
    found = mismatches(watch)
    if fix is None:
        assert found == [], case
        return
    assert len(found) == 1, found
    f = found[0]
    assert f.where == "loss_net:input" and f.step == 0  # caught at the first call
    assert fix in f.fix and f.severity == "error"
    assert f.observed == ("unit" if to_loss is None else "symmetric")


@pytest.mark.slow
def test_policy_raise_stops_after_the_call_not_inside_it():
    """policy="raise": the loss call itself returns normally; the run stops at the end of that batch."""
    from rangewatch import RangeMismatchError

    calls = []

    def call(net, a, b):
        out = net(a, b)  # [0,1] without normalize=True
        calls.append(out)
        return out

    module = Restorer(make_lpips(), call)
    with pytest.raises(RangeMismatchError, match="normalize=True"):
        run(module, [RangeWatch(policy="raise")], photos())
    assert len(calls) == 1 and not module.loss_net._forward_pre_hooks


def test_lpips_result_unchanged_by_watching():
    x = photos()
    fn = make_lpips()
    twin = copy.deepcopy(fn)
    watch = LossWatch().attach(fn)
    try:
        for args, kw in (((x, blurred(x)), {"normalize": True}), ((x, blurred(x)), {}), ((symmetric(x), symmetric(blurred(x))), {})):
            assert torch.equal(fn(*args, **kw), twin(*args, **kw))
        assert [f.observed for f in watch.check(step=0) if f.kind == "mismatch"] == ["unit"]  # the middle call
    finally:
        watch.detach()
    assert not fn._forward_pre_hooks


# ---------------------------------------------------------------------------- torchmetrics LPIPS
@pytest.fixture
def tm_lpips(monkeypatch):
    """torchmetrics' LPIPS with its shipped linear layers and a random AlexNet trunk (no download)."""
    import torchmetrics.functional.image.lpips as tml
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    real = tml._get_tv_model_features
    monkeypatch.setattr(tml, "_get_tv_model_features", lambda net, pretrained=False: real(net, pretrained=False))

    def make(normalize: bool):
        torch.manual_seed(0)
        return LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=normalize)

    return make


def test_torchmetrics_lpips_normalize_read_from_the_metric(tm_lpips):
    x = photos()
    metric, twin = tm_lpips(False), tm_lpips(False)
    watch = LossWatch().attach(metric)
    try:
        assert torch.equal(metric(x, blurred(x)), twin(x, blurred(x)))  # [0,1] passes torchmetrics' own [-1,1] check
        metric.update(symmetric(x), symmetric(blurred(x)))
        twin.update(symmetric(x), symmetric(blurred(x)))
        assert torch.equal(metric.compute(), twin.compute())
        found = [f for f in watch.check(step=3) if f.kind == "mismatch"]
    finally:
        watch.detach()
    # made at the first call (no trainer here, so no step), handed over at the check
    assert len(found) == 1 and found[0].observed == "unit" and found[0].step is None
    assert "LearnedPerceptualImagePatchSimilarity(normalize=True)" in found[0].fix


def test_torchmetrics_lpips_judged_before_it_raises(tm_lpips):
    """normalize=True with [-1,1] data: torchmetrics raises, and the finding (made before the metric
    runs) says why in its own terms."""
    x = photos()
    metric = tm_lpips(True)
    before = metric.__dict__["update"]  # torchmetrics' own wrapper of update
    watch = LossWatch().attach(metric)
    assert metric.__dict__["update"] is not before
    try:
        with pytest.raises(ValueError, match="range"):
            metric(symmetric(x), symmetric(blurred(x)))
        found = [f for f in watch.check(step=0) if f.kind == "mismatch"]
    finally:
        watch.detach()
    assert [f.observed for f in found] == ["symmetric"]
    assert "LearnedPerceptualImagePatchSimilarity(normalize=False)" in found[0].fix
    assert metric.__dict__["update"] is before  # put back


# ---------------------------------------------------------------------------- taming / latent-diffusion LPIPS
@pytest.fixture
def taming_lpips(monkeypatch):
    """A class defined under ``taming.modules.losses.lpips`` with taming's structure (ScalingLayer + a
    VGG16 trunk + linear layers); taming itself is not installed."""
    return _vendored_lpips(monkeypatch, "taming.modules.losses.lpips")


def _vendored_lpips(monkeypatch, dotted: str):
    import torchvision

    src = '''
import torch, torch.nn as nn, torchvision

class ScalingLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.Tensor([-.030, -.088, -.188])[None, :, None, None])
        self.register_buffer("scale", torch.Tensor([.458, .448, .450])[None, :, None, None])

    def forward(self, inp):
        return (inp - self.shift) / self.scale

class vgg16(nn.Module):
    def __init__(self):
        super().__init__()
        f = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])  # vgg16(...).features, without the head
        self.slice1, self.slice2 = f[:4], f[4:9]

    def forward(self, x):
        h1 = self.slice1(x)
        return h1, self.slice2(h1)

class LPIPS(nn.Module):
    def __init__(self):
        super().__init__()
        self.scaling_layer = ScalingLayer()
        self.net = vgg16()
        self.lins = nn.ModuleList([nn.Conv2d(64, 1, 1, bias=False), nn.Conv2d(128, 1, 1, bias=False)])

    def forward(self, input, target):
        outs0, outs1 = self.net(self.scaling_layer(input)), self.net(self.scaling_layer(target))
        val = 0
        for lin, a, b in zip(self.lins, outs0, outs1):
            d = (a / (a.norm(dim=1, keepdim=True) + 1e-10) - b / (b.norm(dim=1, keepdim=True) + 1e-10)) ** 2
            val = val + lin(d).mean([2, 3], keepdim=True)
        return val
'''
    parts = dotted.split(".")
    names = [".".join(parts[: i + 1]) for i in range(len(parts))]
    for n in names:
        monkeypatch.setitem(sys.modules, n, types.ModuleType(n))
    mod = sys.modules[names[-1]]
    exec(compile(src, dotted.replace(".", "/") + ".py", "exec"), mod.__dict__)
    assert torchvision  # the fake trunk uses it
    return mod.LPIPS


@pytest.mark.slow
@pytest.mark.parametrize("to_loss, fix", [(symmetric, None), (None, "x * 2 - 1")])
def test_taming_lpips(taming_lpips, to_loss, fix):
    torch.manual_seed(0)
    loss = taming_lpips().eval()
    watch = RangeWatch()
    run(Restorer(loss, lambda net, a, b: net(a, b), to_loss or (lambda t: t)), [watch], photos())
    no_internal(watch)
    found = mismatches(watch)
    if fix is None:
        assert found == []
    else:
        assert [(f.where, f.step, f.observed) for f in found] == [("loss_net:input", 0, "unit")]
        assert fix in found[0].fix and "taming.modules.losses.lpips.LPIPS" in found[0].fix


def test_generative_models_lpips_copy(monkeypatch):
    """Stability's generative-models keeps the same copy (sgm/modules/autoencoding/lpips/loss/lpips.py)."""
    torch.manual_seed(0)
    loss = _vendored_lpips(monkeypatch, "sgm.modules.autoencoding.lpips.loss.lpips")().eval()
    holder = nn.ModuleDict({"perceptual_loss": loss})
    x = photos(2)
    watch = LossWatch().attach(holder)
    try:
        loss(symmetric(x), symmetric(blurred(x)))
        assert watch.check(0) == []
        loss(x, blurred(x))
        found = watch.check(1)
    finally:
        watch.detach()
    # the first call was right; the wrong one is accumulated on the device and judged at the check
    assert [(f.where, f.observed, f.step) for f in found] == [("perceptual_loss:input", "unit", 1)]
    assert "x * 2 - 1" in found[0].fix and "sgm.modules.autoencoding.lpips.loss.lpips.LPIPS" in found[0].fix


def test_taming_name_alone_is_not_enough(taming_lpips):
    """A class named LPIPS under taming.* without the LPIPS ScalingLayer constants is not claimed."""
    m = taming_lpips()
    m.scaling_layer.shift.fill_(0.0)
    assert find_loss_networks(nn.ModuleDict({"p": m})) == {}


# ---------------------------------------------------------------------------- basicsr VGG perceptual loss
@pytest.fixture
def basicsr_loss(monkeypatch, tmp_path):
    """basicsr's PerceptualLoss with a random VGG19 trunk (basicsr would download torchvision's weights)."""
    import torchvision

    if not import_basicsr():
        pytest.skip("basicsr does not import here")
    from basicsr.archs import vgg_arch
    from basicsr.losses.basic_loss import PerceptualLoss

    def vgg19(pretrained=False, **kw):  # only the trunk basicsr slices (the classifier head is 120M parameters)
        return types.SimpleNamespace(features=torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"]))

    monkeypatch.setattr(vgg_arch, "vgg", types.SimpleNamespace(vgg19=vgg19))
    monkeypatch.chdir(tmp_path)  # no experiments/pretrained_models/vgg19-*.pth here: basicsr takes torchvision's vgg19

    def make(**opts):
        torch.manual_seed(0)
        return PerceptualLoss({"conv2_1": 1.0}, vgg_type="vgg19", perceptual_weight=1.0, style_weight=0.0, **opts)

    return make


@pytest.mark.slow
@pytest.mark.parametrize(
    "opts, to_loss, fix",
    [
        ({}, None, None),
        ({"range_norm": True}, symmetric, None),
        ({}, symmetric, "range_norm=True"),
        ({"range_norm": True}, None, "range_norm=False"),
        ({"use_input_norm": False}, None, "use_input_norm=True"),
    ],
)
def test_basicsr_perceptual_loss(basicsr_loss, opts, to_loss, fix):
    watch = RangeWatch()
    run(Restorer(basicsr_loss(**opts), lambda net, a, b: net(a, b)[0], to_loss or (lambda t: t)), [watch], photos())
    no_internal(watch)
    found = mismatches(watch)
    if fix is None:
        assert found == []
    else:
        assert len(found) == 1 and found[0].where == "loss_net:input" and found[0].step == 0
        assert fix in found[0].fix and "PerceptualLoss" in found[0].fix


@pytest.mark.parametrize("to_loss, fix", [(None, None), (symmetric, "range_norm=True")])
def test_codeformer_lpips_loss_judged_by_its_options(monkeypatch, to_loss, fix):
    """CodeFormer's basicsr LPIPSLoss(use_input_norm=True) feeds ImageNet-normalised images to lpips.LPIPS
    by design: the wrapper's options are judged, not the LPIPS inside it."""
    monkeypatch.setitem(sys.modules, "basicsr.losses.losses", types.ModuleType("basicsr.losses.losses"))

    class LPIPSLoss(nn.Module):  # as in CodeFormer's basicsr/losses/losses.py
        def __init__(self, use_input_norm=True, range_norm=False):
            super().__init__()
            self.perceptual = make_lpips()
            self.use_input_norm, self.range_norm = use_input_norm, range_norm
            self.register_buffer("mean", torch.Tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
            self.register_buffer("std", torch.Tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

        def forward(self, pred, target):
            if self.range_norm:
                pred, target = (pred + 1) / 2, (target + 1) / 2
            if self.use_input_norm:
                pred, target = (pred - self.mean) / self.std, (target - self.mean) / self.std
            return self.perceptual(pred.contiguous(), target.contiguous()).mean()

    LPIPSLoss.__module__ = "basicsr.losses.losses"
    x = photos()
    holder = nn.ModuleDict({"lpips_loss": LPIPSLoss()})
    assert list(find_loss_networks(holder)) == ["lpips_loss"]
    watch = LossWatch().attach(holder)
    try:
        t = to_loss or (lambda v: v)
        holder["lpips_loss"](t(x), t(blurred(x)))
        found = [f for f in watch.check(0) if f.kind == "mismatch"]
    finally:
        watch.detach()
    if fix is None:
        assert found == []
    else:
        assert [f.where for f in found] == ["lpips_loss:input"] and fix in found[0].fix and "LPIPSLoss" in found[0].fix


def test_basicsr_perceptual_loss_unchanged_by_watching(basicsr_loss):
    x = photos()
    loss = basicsr_loss(range_norm=True)
    twin = copy.deepcopy(loss)
    watch = LossWatch().attach(loss)
    try:
        assert torch.equal(loss(x, blurred(x))[0], twin(x, blurred(x))[0])
        assert [f.fix for f in watch.check(0) if f.kind == "mismatch"] == [
            "construct PerceptualLoss with range_norm=False: the input is already [0,1]"]
    finally:
        watch.detach()


# ---------------------------------------------------------------------------- torchvision feature extractors
def _classifier(frozen: bool) -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    m = torchvision.models.squeezenet1_1(weights=None, num_classes=10)  # a small one: the rule is the same for all
    if frozen:
        m.requires_grad_(False).eval()
    return m


def _imagenet(t: torch.Tensor) -> torch.Tensor:
    from torchvision.transforms import v2

    return v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])(t)


def _feature_loss(net, a, b):
    return F.mse_loss(net(a), net(b))


@pytest.mark.slow
@pytest.mark.parametrize("frozen, to_loss, flagged", [(True, _imagenet, False), (True, None, True), (False, None, False), (False, _imagenet, False)])
def test_torchvision_classifier(frozen, to_loss, flagged):
    """A frozen torchvision classifier is held to ImageNet mean/std; one being trained is never judged
    (from scratch it expects nothing; on ImageNet-normalised data it gets what it expects)."""
    watch = RangeWatch()
    run(Restorer(_classifier(frozen), _feature_loss, to_loss or (lambda t: t)), [watch], photos())
    no_internal(watch)
    found = mismatches(watch)
    if not flagged:
        assert found == []
    else:
        assert [(f.where, f.observed, f.expected, f.step) for f in found] == [("loss_net:input", "unit", "imagenet", 0)]
        assert "Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)" in found[0].fix and "SqueezeNet" in found[0].fix


# ---------------------------------------------------------------------------- PSNR / SSIM metrics and functions
class MetricModule(Restorer):
    """Validation metrics, as Lightning code writes them: metric objects called as ``metric(preds, target)``
    and logged, and functional calls."""

    def __init__(self, to_data, psnr_range=1.0, ssim_range=1.0, functional_range=None):
        from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

        super().__init__(nn.Identity(), lambda net, a, b: (a - b).abs().mean())
        self.to_data = to_data
        self.psnr = PeakSignalNoiseRatio(data_range=psnr_range)
        self.ssim = StructuralSimilarityIndexMeasure(data_range=ssim_range)
        self.functional_range = functional_range
        self.logged: list[torch.Tensor] = []

    def validation_step(self, batch, batch_idx):
        lq, gt = batch
        out, gt = self.to_data(self(lq)), self.to_data(gt)
        self.psnr(out, gt)
        self.psnr.update(out, gt)  # direct update too
        self.ssim.update(out, gt)
        self.log("val/psnr", self.psnr)
        if self.functional_range is not None:
            self.logged.append(tm_psnr(out, gt, data_range=self.functional_range))

    def on_validation_epoch_end(self):
        self.logged.append(self.ssim.compute())
        self.ssim.reset()


@pytest.mark.slow
def test_psnr_ssim_data_range_silent_when_right():
    watch = RangeWatch()
    run(MetricModule(symmetric, psnr_range=2.0, ssim_range=(-1.0, 1.0), functional_range=2.0), [watch], photos(), val=True)
    no_internal(watch)
    assert mismatches(watch) == []
    assert "psnr" in find_loss_networks(MetricModule(symmetric)) and "ssim" in find_loss_networks(MetricModule(symmetric))


@pytest.mark.slow
def test_psnr_ssim_data_range_wrong_for_symmetric_data():
    watch = RangeWatch()
    module = MetricModule(symmetric, psnr_range=1.0, ssim_range=(0.0, 1.0), functional_range=1.0)
    before = module.psnr.__dict__["update"]
    trainer = run(module, [watch], photos(), val=True)
    assert module.psnr.__dict__["update"] is before  # torchmetrics' own update is back after the run
    no_internal(watch)
    found = {f.where: f for f in mismatches(watch)}
    assert set(found) == {"val/psnr:input", "val/ssim:input", "val/peak_signal_noise_ratio:input"}
    assert all(f.observed == "symmetric" and f.step == trainer.global_step for f in found.values())
    assert "data_range=2.0" in found["val/psnr:input"].fix and "PeakSignalNoiseRatio" in found["val/psnr:input"].fix
    assert "data_range=(-1, 1)" in found["val/ssim:input"].fix  # the tuple clamps: negatives were cut
    assert "data_range=2.0 to peak_signal_noise_ratio" in found["val/peak_signal_noise_ratio:input"].fix
    # the functional form is put back everywhere after the run
    import torchmetrics.functional as tmf
    from torchmetrics.functional.image import psnr as psnr_mod

    # (torchmetrics.functional's name is a deprecation shim that calls the real one: seen through it)
    assert tm_psnr is tmf.peak_signal_noise_ratio and not hasattr(tm_psnr, "__rangewatch_original__")
    assert not hasattr(psnr_mod.peak_signal_noise_ratio, "__rangewatch_original__")
    assert psnr_mod.peak_signal_noise_ratio.__module__ == "torchmetrics.functional.image.psnr"


@pytest.mark.slow
def test_metric_values_unchanged_by_watching():
    """The same run with and without RangeWatch logs bit-identical PSNR / SSIM values."""
    values = []
    for callbacks in ([RangeWatch()], []):
        pl.seed_everything(0)
        m = MetricModule(symmetric, psnr_range=1.0, ssim_range=(0.0, 1.0), functional_range=1.0)
        trainer = run(m, callbacks, photos(), val=True)
        values.append([trainer.callback_metrics["val/psnr"]] + m.logged + m.values)
    assert len(values[0]) == len(values[1]) > 3
    assert all(torch.equal(a, b) for a, b in zip(*values))


def test_undecidable_data_is_not_judged():
    """PSNR with data_range=1.0 on data that no convention explains (noise, a narrow band) says nothing."""
    from torchmetrics.image import PeakSignalNoiseRatio

    g = torch.Generator().manual_seed(0)
    metric = PeakSignalNoiseRatio(data_range=1.0)
    watch = LossWatch().attach(metric)
    try:
        for x in (torch.randn(2, 3, 32, 32, generator=g) * 1.5, torch.rand(2, 3, 32, 32, generator=g) * 0.4 + 0.3):
            assert not infer_convention(x).confident
            metric(x, x.flip(-1))
            metric(x, x.flip(-1))
        assert watch.check(0) == []
    finally:
        watch.detach()


# ---------------------------------------------------------------------------- FID / KID / IS
@pytest.fixture
def random_inception(monkeypatch):
    """torchmetrics' InceptionV3 (torch-fidelity) with random weights in place of the downloaded ones."""
    tf = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3", reason="FID needs torch-fidelity")
    monkeypatch.setattr(tf, "load_state_dict_from_url", lambda *a, **k: None)
    real = tf.FeatureExtractorInceptionV3.load_state_dict
    monkeypatch.setattr(tf.FeatureExtractorInceptionV3, "load_state_dict",
                        lambda self, sd, *a, **k: None if sd is None else real(self, sd, *a, **k))


@pytest.mark.slow
def test_fid_normalize_judged_before_the_network(random_inception):
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore
    from torchmetrics.image.kid import KernelInceptionDistance

    x = photos(2)
    torch.manual_seed(0)
    fid = FrechetInceptionDistance(feature=64, normalize=True)
    twin = copy.deepcopy(fid)
    plain = FrechetInceptionDistance(feature=64)
    holder = nn.ModuleDict({"fid": fid, "fid_uint8": plain, "kid": KernelInceptionDistance(feature=64, subset_size=2),
                            "is_": InceptionScore(feature=64, normalize=True)})
    labels = {k: w.what for k, w in find_loss_networks(holder).items()}
    assert labels == {"fid": "FrechetInceptionDistance(normalize=True)", "fid_uint8": "FrechetInceptionDistance(normalize=False)",
                      "kid": "KernelInceptionDistance(normalize=False)", "is_": "InceptionScore(normalize=True)"}
    watch = LossWatch().attach(holder)
    try:
        fid.update(x, real=True)  # right: float [0,1] with normalize=True
        twin.update(x, real=True)
        assert torch.equal(fid.real_features_sum, twin.real_features_sum)
        assert [f for f in watch.check(0) if f.kind == "mismatch"] == []
        fid.update(symmetric(x), real=False)  # [-1,1]: (x * 255).byte() wraps the negatives, silently
        with pytest.raises(ValueError, match="uint8"):  # torch-fidelity insists on uint8: the call fails, the finding says why
            plain.update(x, real=True)
        found = {f.where: f for f in watch.check(1) if f.kind == "mismatch"}
    finally:
        watch.detach()
    assert set(found) == {"fid:input", "fid_uint8:input"}
    assert "(x + 1) / 2" in found["fid:input"].fix and "wrap" in found["fid:input"].fix
    assert "FrechetInceptionDistance(normalize=True)" in found["fid_uint8:input"].fix


def test_fid_custom_feature_extractor_not_judged():
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Features(nn.Module):
        num_features = 8

        def forward(self, x):
            return x.float().mean((2, 3)).repeat(1, 3)[:, :8]

    w = find_loss_networks(nn.ModuleDict({"fid": FrechetInceptionDistance(feature=Features(), normalize=True)}))["fid"]
    assert w.note and w.read((photos(2),), {"real": True}) is None


# ---------------------------------------------------------------------------- basicsr calculate_psnr / ssim
@pytest.mark.slow
@pytest.mark.parametrize("via_tensor2img", [True, False])
def test_basicsr_calculate_psnr(via_tensor2img):
    if not import_basicsr():
        pytest.skip("basicsr does not import here")
    from basicsr.metrics import calculate_metric, calculate_psnr
    from basicsr.utils import tensor2img

    def metric_call(module, out, gt):
        if via_tensor2img:  # basicsr's own validation: 0-255 images from tensor2img
            a, b = tensor2img(out), tensor2img(gt)
        else:  # [0,1] float arrays straight from the tensors: PSNR reads ~48 dB too high
            a, b = out[0].permute(1, 2, 0).numpy(), gt[0].permute(1, 2, 0).numpy()
        data = dict(img=a, img2=b)  # as basicsr's SRModel.nondist_validation calls them (METRIC_REGISTRY)
        module.values.append(torch.tensor([calculate_metric(data, {"type": t, "crop_border": 0}) for t in ("calculate_psnr", "calculate_ssim")]))

    watch = RangeWatch()
    module = Restorer(nn.Identity(), lambda net, a, b: (a - b).abs().mean(), metric_call=metric_call)
    run(module, [watch], photos(), val=True)
    no_internal(watch)
    found = mismatches(watch)
    if via_tensor2img:
        assert found == []
    else:
        assert {f.where for f in found} == {"val/calculate_psnr:input", "val/calculate_ssim:input"}
        assert all("tensor2img(x)" in f.fix and f.observed == "unit" for f in found)
    import basicsr.metrics.psnr_ssim as ps

    assert ps.calculate_psnr is calculate_psnr and not hasattr(calculate_psnr, "__rangewatch_original__")


# ---------------------------------------------------------------------------- cost and safety
def test_later_calls_never_read_values_back(monkeypatch):
    """After the first call (judged at once), calls only accumulate on the device: every value-reading
    entry point raises inside the watcher, and a read would show up as an internal finding."""
    from helpers.stats_reference import forbid_sync
    from torchmetrics.image import PeakSignalNoiseRatio

    x = symmetric(photos())
    metric = PeakSignalNoiseRatio(data_range=1.0)
    watch = LossWatch().attach(metric)
    real_feed = LossWatch._feed
    guarded = []

    def feed(self, *a, **k):
        if not self._windows:
            return real_feed(self, *a, **k)  # the first call: judged now
        with monkeypatch.context() as m:
            forbid_sync(m)
            guarded.append(1)
            return real_feed(self, *a, **k)

    monkeypatch.setattr(LossWatch, "_feed", feed)
    try:
        for _ in range(4):
            metric(x, blurred(x))
        found = watch.check(step=5)
    finally:
        watch.detach()
    assert len(guarded) == 3  # PSNR's forward calls update once; every call after the first is guarded
    assert [f.kind for f in found] == ["mismatch"]


def test_a_failure_inside_the_watcher_never_reaches_the_call():
    from torchmetrics.image import PeakSignalNoiseRatio

    def broken():
        raise RuntimeError("stage lookup failed")

    x = photos()
    metric, twin = PeakSignalNoiseRatio(data_range=1.0), PeakSignalNoiseRatio(data_range=1.0)
    watch = LossWatch(stage=broken).attach(metric)
    try:
        assert torch.equal(metric(x, blurred(x)), twin(x, blurred(x)))
        assert torch.equal(metric(x, blurred(x)), twin(x, blurred(x)))
        found = watch.check(0)
    finally:
        watch.detach()
    assert [(f.kind, f.where) for f in found] == [("internal", "PeakSignalNoiseRatio")]  # reported once, then off
    assert "stage lookup failed" in found[0].observed


def test_no_library_is_imported(monkeypatch):
    """Watching never imports lpips, basicsr, taming/ldm or torch_fidelity: with them taken out of
    sys.modules and every import of them refused, an LPIPS and a PSNR are found, watched and judged."""
    from torchmetrics.image import PeakSignalNoiseRatio

    blocked = ("lpips", "basicsr", "taming", "ldm", "torch_fidelity")
    tried: list[str] = []

    class Refuse:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name.split(".")[0] in blocked:
                tried.append(name)
                raise ImportError(f"test: {name} may not be imported")
            return None

    holder = nn.ModuleDict({"lpips": make_lpips(), "psnr": PeakSignalNoiseRatio(data_range=1.0)})
    for name in [n for n in sys.modules if n.split(".")[0] in blocked]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [Refuse(), *sys.meta_path])
    x = photos(2)
    watch = LossWatch().attach(holder)
    try:
        holder["lpips"](x, blurred(x))
        holder["psnr"](symmetric(x), symmetric(blurred(x)))
        found = watch.check(0)
    finally:
        watch.detach()
    assert tried == []
    assert sorted((f.where, f.kind) for f in found) == [("lpips:input", "mismatch"), ("psnr:input", "mismatch")]
