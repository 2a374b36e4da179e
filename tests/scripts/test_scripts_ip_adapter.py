"""IP-Adapter's ``tutorial_train.py`` (tencent-ailab/IP-Adapter), reproduced with tiny random-init models: the dataset
gives ``image`` through ``Compose([Resize, CenterCrop, ToTensor(), Normalize([0.5], [0.5])])`` for the VAE and
``clip_image`` through ``CLIPImageProcessor`` for the image encoder, and draws its drop decisions with
``random.random()``; a frozen VAE, text encoder and ``CLIPVisionModelWithProjection``; the trained ``IPAdapter``
(UNet + image projection) through ``accelerator.prepare``. The README's lines:
``rangewatch.watch(vae=vae, image_encoder=image_encoder, text_encoder=text_encoder, unet=unet)``, ``watch.batch``,
``watch.tensor("latents", latents)``, ``watch.step()``.

- correct script: no warning, and the losses of a seeded run equal those without the watch (the dataset's
  ``random.random()`` drop decisions included);
- the two normalisations swapped (the VAE gets the CLIP-normalised image, the image encoder the [-1, 1] one): a
  mismatch at ``vae.encoder:input`` and one at ``image_encoder:input``, both at step 0, nothing declared.
"""

from __future__ import annotations

import random

import torch
from torch import nn

from helpers.scripts_models import photos_pil, sd_transforms, tiny_image_encoder, tiny_text_encoder, tiny_unet, tiny_vae
from helpers.script_runs import problems, trains_identically

SIZE = 32
STEPS = 3


class MyDataset(torch.utils.data.Dataset):
    """tutorial_train.py's MyDataset, on photos: image for the VAE, clip_image for the image encoder, drop rates."""

    def __init__(self, swap: bool = False, i_drop_rate=0.3, t_drop_rate=0.3, ti_drop_rate=0.2):
        from transformers import CLIPImageProcessor

        self.images = photos_pil(8, 48)
        self.transform = sd_transforms(True, SIZE)
        self.clip_image_processor = CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})
        self.swap = swap
        self.i_drop_rate, self.t_drop_rate, self.ti_drop_rate = i_drop_rate, t_drop_rate, ti_drop_rate

    def __len__(self):
        return len(self.images)

    def __getitem__(self, idx):
        raw_image = self.images[idx]
        image = self.transform(raw_image.convert("RGB"))
        clip_image = self.clip_image_processor(images=raw_image, return_tensors="pt").pixel_values
        if self.swap:  # the bug: each model gets the other's normalisation
            image, clip_image = clip_image[0], image[None]
        drop_image_embed = 0
        text_ids = torch.arange(8) % 50 + idx
        rand_num = random.random()
        if rand_num < self.i_drop_rate:
            drop_image_embed = 1
        elif rand_num < (self.i_drop_rate + self.t_drop_rate):
            text_ids = torch.zeros(8, dtype=torch.long)
        elif rand_num < (self.i_drop_rate + self.t_drop_rate + self.ti_drop_rate):
            text_ids = torch.zeros(8, dtype=torch.long)
            drop_image_embed = 1
        return {"image": image, "text_input_ids": text_ids, "clip_image": clip_image, "drop_image_embed": drop_image_embed}


def collate_fn(data):
    return {
        "images": torch.stack([e["image"] for e in data]),
        "text_input_ids": torch.stack([e["text_input_ids"] for e in data]),
        "clip_images": torch.cat([e["clip_image"] for e in data], dim=0),
        "drop_image_embeds": [e["drop_image_embed"] for e in data],
    }


class ImageProjModel(nn.Module):
    def __init__(self, cross_attention_dim=16, clip_embeddings_dim=16, clip_extra_context_tokens=2):
        super().__init__()
        self.cross_attention_dim, self.clip_extra_context_tokens = cross_attention_dim, clip_extra_context_tokens
        self.proj = nn.Linear(clip_embeddings_dim, clip_extra_context_tokens * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, image_embeds):
        tokens = self.proj(image_embeds).reshape(-1, self.clip_extra_context_tokens, self.cross_attention_dim)
        return self.norm(tokens)


class IPAdapter(nn.Module):
    def __init__(self, unet, image_proj_model):
        super().__init__()
        self.unet, self.image_proj_model = unet, image_proj_model

    def forward(self, noisy_latents, timesteps, encoder_hidden_states, image_embeds):
        ip_tokens = self.image_proj_model(image_embeds)
        encoder_hidden_states = torch.cat([encoder_hidden_states, ip_tokens], dim=1)
        return self.unet(noisy_latents, timesteps, encoder_hidden_states).sample


def tutorial_train(watch_it: bool, swap: bool = False, steps: int = STEPS):
    import rangewatch
    from accelerate import Accelerator
    from diffusers import DDPMScheduler

    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    vae, text_encoder, image_encoder, unet = tiny_vae(), tiny_text_encoder(), tiny_image_encoder(), tiny_unet()
    noise_scheduler = DDPMScheduler(num_train_timesteps=100)
    for m in (vae, text_encoder, image_encoder, unet):
        m.requires_grad_(False)
    ip_adapter = IPAdapter(unet, ImageProjModel())
    optimizer = torch.optim.AdamW(ip_adapter.image_proj_model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(MyDataset(swap), collate_fn=collate_fn, batch_size=4, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    ip_adapter, optimizer, loader = accelerator.prepare(ip_adapter, optimizer, loader)
    watch = (rangewatch.watch(vae=vae, image_encoder=image_encoder, text_encoder=text_encoder, unet=unet, policy="log")
             if watch_it else None)
    losses = []
    while len(losses) < steps:
        for batch in loader:
            if watch is not None:
                watch.batch(batch)
            with torch.no_grad():
                latents = vae.encode(batch["images"]).latent_dist.sample() * vae.config.scaling_factor
            if watch is not None:
                watch.tensor("latents", latents)
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],)).long()
            noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
            with torch.no_grad():
                image_embeds = image_encoder(batch["clip_images"]).image_embeds
            image_embeds = torch.stack([torch.zeros_like(e) if d == 1 else e for e, d in zip(image_embeds, batch["drop_image_embeds"])])
            with torch.no_grad():
                encoder_hidden_states = text_encoder(batch["text_input_ids"])[0]
            noise_pred = ip_adapter(noisy_latents, timesteps, encoder_hidden_states, image_embeds)
            loss = torch.nn.functional.mse_loss(noise_pred.float(), noise.float(), reduction="mean")
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            if watch is not None:
                watch.step()
            if len(losses) >= steps:
                break
    if watch is not None:
        watch.close()
    return losses, watch


def test_correct_tutorial_train_is_silent_and_trains_identically():
    # equal losses: the dataset's random.random() drop decisions are untouched by the watch
    watch = trains_identically(tutorial_train, seed=lambda: random.seed(42))
    assert [str(f) for f in problems(watch)] == []
    assert watch.expectation_for("image_encoder:input").convention == "clip"
    assert watch.expectation_for("vae.encoder:input").convention == "symmetric"


def test_swapped_normalisations_are_caught_at_the_first_check():
    random.seed(42)
    _, watch = tutorial_train(True, swap=True)
    hits = {f.where: f for f in watch.findings if f.kind == "mismatch"}
    assert {"vae.encoder:input", "image_encoder:input"} <= set(hits), [str(f) for f in watch.findings]
    assert hits["vae.encoder:input"].step == 0 and hits["image_encoder:input"].step == 0
    assert hits["image_encoder:input"].observed == "symmetric" and hits["image_encoder:input"].expected == "clip"
