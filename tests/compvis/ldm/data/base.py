"""Tiny copy of the latent-diffusion / taming data classes: HWC numpy images, ``image / 127.5 - 1``
(``ldm/data/imagenet.py``, ``taming/data/base.py`` ``ImagePaths.preprocess_image``)."""

import numpy as np
from PIL import Image
from torch.utils.data import Dataset


class ImagePaths(Dataset):
    def __init__(self, images, size=None, labels=None):
        self.size = size
        self.labels = dict() if labels is None else labels
        self.labels["file_path_"] = list(images)  # here: HWC uint8 arrays rather than paths
        self._length = len(images)

    def __len__(self):
        return self._length

    def preprocess_image(self, image):
        image = Image.fromarray(image)
        if not image.mode == "RGB":
            image = image.convert("RGB")
        s = min(image.size)
        image = image.crop(((image.size[0] - s) // 2, (image.size[1] - s) // 2, (image.size[0] + s) // 2, (image.size[1] + s) // 2))
        image = image.resize((self.size, self.size), Image.BICUBIC)
        image = np.array(image).astype(np.uint8)
        image = (image / 127.5 - 1.0).astype(np.float32)
        return image

    def __getitem__(self, i):
        example = dict()
        example["image"] = self.preprocess_image(self.labels["file_path_"][i])
        for k in self.labels:
            if k != "file_path_":
                example[k] = self.labels[k][i]
        return example


class ImagePathsUnit(ImagePaths):
    """The seed bug as a user makes it: ``image / 255`` ([0, 1]) instead of ``image / 127.5 - 1``."""

    def preprocess_image(self, image):
        return ((super().preprocess_image(image) + 1.0) * 127.5 / 255.0).astype(np.float32)
