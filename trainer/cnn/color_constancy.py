"""Shades-of-grey colour constancy (Finlayson & Trezzi 2004) as a layer of the model itself.

Dermoscopes and cameras of different clinics light and white-balance lesions differently; a
net can learn the camera instead of the lesion. Shades of grey estimates each image's
illuminant as the Minkowski p-norm mean of every channel,

    e_c = (mean_x I_c(x)^p)^(1/p),       p = 6 (Barata et al. 2015 for dermoscopy),

and rescales each channel so that the estimate becomes grey:

    I'_c(x) = min(I_c(x) / (sqrt(3) * e_c / ||e||), max_value).

p = 1 is grey world, p -> inf is max-RGB. The gains depend only on the ratios of the e_c, so a
brighter copy of an image gets the same gains. Being a layer of the model (not a step of the
data engine), the very same code runs at training, evaluation, export and prediction.
"""
from __future__ import annotations

import keras
from keras import ops

from trainer.cnn.constants import COLOR_CONSTANCY  # noqa: F401  (the choices, listed once)


@keras.saving.register_keras_serializable(package="isicflow")
class ShadesOfGrey(keras.layers.Layer):
    """(batch, H, W, 3) images in [0, max_value] -> the same, illuminant made grey per image."""

    def __init__(self, power: float = 6.0, max_value: float = 1.0, epsilon: float = 1e-6,
                 **kwargs):
        super().__init__(**kwargs)
        if power < 1:
            raise ValueError(f"power must be >= 1 (1 = grey world), got {power}")
        self.power, self.max_value, self.epsilon = float(power), float(max_value), float(epsilon)

    def call(self, images):
        x = ops.cast(images, "float32")
        scaled = x / self.max_value + self.epsilon  # p-th powers of values <= 1 stay finite
        illuminant = ops.power(ops.mean(ops.power(scaled, self.power), axis=(1, 2),
                                        keepdims=True), 1.0 / self.power)
        unit = illuminant / ops.sqrt(ops.sum(ops.square(illuminant), axis=-1, keepdims=True))
        corrected = ops.clip(x / (unit * 3.0 ** 0.5), 0.0, self.max_value)
        return ops.cast(corrected, images.dtype)

    def get_config(self) -> dict:
        return {**super().get_config(), "power": self.power, "max_value": self.max_value,
                "epsilon": self.epsilon}
