"""PreActResNet-18 in the layout of Wong et al. (2020) fast_adversarial, with latent taps."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from latentadv.models.common import normalize, readout
from latentadv.models.taps import tap

# PyTorch's BatchNorm2d defaults (momentum 0.1 there is 1 - 0.9 here).
BatchNorm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)
# He-normal (fan_out) initialisation, as in the reference WideResNet and torchvision ResNets.
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def conv3x3(features: int, strides: int = 1, name: str | None = None,
            dtype: Any = jnp.float32) -> nn.Conv:
  """A bias-free 3x3 convolution with PyTorch-style symmetric padding 1, computing in dtype."""
  return nn.Conv(features, (3, 3), strides=strides, padding=((1, 1), (1, 1)), use_bias=False,
                 kernel_init=conv_init, name=name, dtype=dtype)


class PreActBlock(nn.Module):
  """Pre-activation basic block: BN-relu-conv3x3-BN-relu-(dropout)-conv3x3 plus shortcut.

  The shortcut is the identity, or a strided 1x1 conv of the pre-activated input when the
  stride or the width changes. Maps (B, H, W, C) to (B, H/strides, W/strides, features),
  computing in `dtype`.
  """
  features: int
  strides: int = 1
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Applies the block; BatchNorm uses batch statistics and dropout is active iff train."""
    norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
    out = nn.relu(norm(name='bn1')(x))
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = nn.Conv(self.features, (1, 1), strides=self.strides, use_bias=False,
                         kernel_init=conv_init, name='shortcut', dtype=self.dtype)(out)
    out = conv3x3(self.features, self.strides, name='conv1', dtype=self.dtype)(out)
    out = nn.relu(norm(name='bn2')(out))
    out = nn.Dropout(self.dropout, deterministic=not train)(out)
    out = conv3x3(self.features, name='conv2', dtype=self.dtype)(out)
    return out + shortcut


class PreActResNet18(nn.Module):
  """conv3x3 [stem] - 4 stages of 2 PreActBlocks [stage1..stage4] - BN - relu - avgpool - head.

  Stage widths are width * (1, 2, 4, 8) with strides (1, 2, 2, 2). Taps: 'stem' and 'stage1'
  (B, H, W, width), 'stage2' (B, H/2, W/2, 2 width), 'stage3', 'stage4'; features (B, 8 width).
  `dtype` is the compute dtype (models/common.py); params and outputs are float32.
  """
  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  width: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, output: str = 'logits') -> jax.Array:
    """Maps images x (B, H, W, C) in [0, 1] to logits (B, num_classes) or features (B, 8 width)."""
    h = normalize(x, self.mean, self.std)
    h = conv3x3(self.width, name='stem_conv', dtype=self.dtype)(h)
    h = tap(self, 'stem', h)
    for stage, (multiplier, strides) in enumerate(zip((1, 2, 4, 8), (1, 2, 2, 2)), start=1):
      for block in range(2):
        h = PreActBlock(self.width * multiplier, strides if block == 0 else 1,
                        dtype=self.dtype, name=f'stage{stage}_block{block + 1}')(h, train)
      h = tap(self, f'stage{stage}', h)
    h = nn.relu(BatchNorm(use_running_average=not train, dtype=self.dtype, name='final_bn')(h))
    return readout(h.mean(axis=(1, 2)), self.num_classes, output, dtype=self.dtype)
