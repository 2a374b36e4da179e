"""Tiny copy of Stability generative-models' ``sgm/models/autoencoder.py`` engine structure."""

import pytorch_lightning as pl

from ldm.models.autoencoder import Decoder, Encoder


class AbstractAutoencoder(pl.LightningModule):
    def __init__(self, input_key="jpg"):
        super().__init__()
        self.input_key = input_key


class AutoencodingEngine(AbstractAutoencoder):
    def __init__(self, ddconfig=None, **kwargs):
        super().__init__(**kwargs)
        ddconfig = ddconfig or {"ch": 8, "z_channels": 2, "double_z": True}
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
