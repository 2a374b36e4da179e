"""Tiny copy of taming-transformers' ``taming/models/vqgan.py`` VQModel structure."""

import pytorch_lightning as pl
import torch
from torch import nn

from ldm.models.autoencoder import Decoder, Encoder


class VQModel(pl.LightningModule):
    def __init__(self, ddconfig=None, n_embed=16, embed_dim=2, image_key="image"):
        super().__init__()
        ddconfig = ddconfig or {"ch": 8, "z_channels": 2, "double_z": False}
        self.image_key = image_key
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quantize = nn.Embedding(n_embed, embed_dim)
        self.quant_conv = torch.nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = torch.nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)


class VQSegmentationModel(VQModel):
    """Not a pixel model: it encodes one-hot segmentation maps (rangewatch must not expect [-1, 1] here)."""
