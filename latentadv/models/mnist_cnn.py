"""The small MNIST CNN of Wong et al. (2020), "Fast is better than free"."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from latentadv.models.common import normalize, readout, torch_dense_init
from latentadv.models.convolution import Conv
from latentadv.models.taps import tap

_PAD1 = ((1, 1), (1, 1))


class MnistCNN(nn.Module):
  """conv16 4x4/2 - relu [stem] - conv32 4x4/2 - relu [stage1] - dense100 - relu - head.

  Taps: 'stem' (B, H/2, W/2, 16) and 'stage1' (B, H/4, W/4, 32); features (B, 100).
  Initialised as the PyTorch reference is (uniform fan-in init of weights and biases); with
  `normalize=False` it reads raw [0, 1] pixels like the reference, otherwise (x - mean) / std.
  Both matter on MNIST at eps 0.3: with Flax's default init and normalised input, FGSM-RS
  overfits catastrophically where the reference does not (README, Results).
  `dtype` is the compute dtype (models/common.py); params and outputs are float32.
  """
  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  normalize: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, output: str = 'logits') -> jax.Array:
    """Maps images x (B, H, W, C) in [0, 1] to logits (B, num_classes) or features (B, 100).

    `train` is accepted for a uniform model interface; this model has no BatchNorm or dropout.
    """
    del train
    h = normalize(x, self.mean, self.std) if self.normalize else x
    h = nn.relu(Conv(16, (4, 4), strides=2, padding=_PAD1, name='conv1', dtype=self.dtype,
                     **torch_dense_init(4 * 4 * x.shape[-1]))(h))
    h = tap(self, 'stem', h)
    h = nn.relu(Conv(32, (4, 4), strides=2, padding=_PAD1, name='conv2', dtype=self.dtype,
                     **torch_dense_init(4 * 4 * 16))(h))
    h = tap(self, 'stage1', h)
    h = h.reshape((h.shape[0], -1))
    h = nn.relu(nn.Dense(100, name='fc', dtype=self.dtype, **torch_dense_init(h.shape[-1]))(h))
    return readout(h, self.num_classes, output, dtype=self.dtype, **torch_dense_init(100))

