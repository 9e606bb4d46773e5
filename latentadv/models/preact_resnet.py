"""PreActResNet-18 in the layout of Wong et al. (2020) fast_adversarial, with latent taps."""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from latentadv.models.common import (he_kernel_init, normalize, readout, torch_dense_init,
                                     torch_kernel_init)
from latentadv.models.convolution import Conv
from latentadv.models.taps import tap

# PyTorch's BatchNorm2d defaults (momentum 0.1 there is 1 - 0.9 here); scale 1, bias 0.
BatchNorm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)
# The convolutions' initialisation by name (config.model.preact_resnet18.init): 'torch' is
# PyTorch's default, which the reference PreActResNet-18 (fast_adversarial, SLAT, N-FGSM)
# keeps; 'he' is He-normal fan-out (GradAlign's code), six times its variance for a 3x3 stage
# conv.
CONV_INITS = {'torch': torch_kernel_init, 'he': he_kernel_init}

Initializer = Callable[..., jax.Array]


def conv3x3(features: int, strides: int = 1, name: str | None = None,
            dtype: Any = jnp.float32, kernel_init: Initializer = he_kernel_init) -> nn.Conv:
  """A bias-free 3x3 convolution with PyTorch-style symmetric padding 1, computing in dtype."""
  return Conv(features, (3, 3), strides=strides, padding=((1, 1), (1, 1)), use_bias=False,
              kernel_init=kernel_init, name=name, dtype=dtype)


class PreActBlock(nn.Module):
  """Pre-activation basic block: BN-relu-conv3x3-BN-relu-(dropout)-conv3x3 plus shortcut.

  The shortcut is the identity, or a strided 1x1 conv when the stride or the width changes:
  of the block's raw input x (the PreActResNet-18 of fast_adversarial and SLAT), or of the
  pre-activated relu(bn1(x)) with `preactivated_shortcut` (the WideResNet of TRADES). Maps
  (B, H, W, C) to (B, H/strides, W/strides, features), computing in `dtype`; every convolution
  is initialised with `kernel_init`.
  """
  features: int
  strides: int = 1
  dropout: float = 0.0
  dtype: Any = jnp.float32
  kernel_init: Initializer = he_kernel_init
  preactivated_shortcut: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Applies the block; BatchNorm uses batch statistics and dropout is active iff train."""
    norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
    out = nn.relu(norm(name='bn1')(x))
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = Conv(self.features, (1, 1), strides=self.strides, use_bias=False,
                      kernel_init=self.kernel_init, name='shortcut', dtype=self.dtype)(
                          out if self.preactivated_shortcut else x)
    out = conv3x3(self.features, self.strides, name='conv1', dtype=self.dtype,
                  kernel_init=self.kernel_init)(out)
    out = nn.relu(norm(name='bn2')(out))
    out = nn.Dropout(self.dropout, deterministic=not train)(out)
    out = conv3x3(self.features, name='conv2', dtype=self.dtype,
                  kernel_init=self.kernel_init)(out)
    return out + shortcut


class PreActResNet18(nn.Module):
  """conv3x3 [stem] - 4 stages of 2 PreActBlocks [stage1..stage4] - BN - relu - avgpool - head.

  As the reference (fast_adversarial, SLAT, N-FGSM): the projection shortcut of the first block
  of stages 2-4 convolves the block's raw input, not its pre-activation.

  Stage widths are width * (1, 2, 4, 8) with strides (1, 2, 2, 2). Taps: 'stem' and 'stage1'
  (B, H, W, width), 'stage2' (B, H/2, W/2, 2 width), 'stage3', 'stage4'; features (B, 8 width).
  `dtype` is the compute dtype (models/common.py); params and outputs are float32.

  Initialisation (`initialization`, config key `init`): 'torch' (default) is the reference code's, PyTorch's default for
  nn.Conv2d and nn.Linear: every convolution kernel U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with
  fan_in = kh kw C_in, the head's kernel and bias the same with fan_in = 8 width; BatchNorm
  scale 1, bias 0. 'he': He-normal fan-out convolutions (variance 2 / (kh kw C_out)) and Flax's
  default head (LeCun normal kernel, zero bias). The init sets the scale of the tapped
  features, and with it the strength of an absolute latent radius (SLAT's eps_h): at 'he' the
  `stage1` features are about twice as large and SLAT gives no robustness (README).
  """
  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  width: int = 64
  initialization: str = 'torch'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, output: str = 'logits') -> jax.Array:
    """Maps images x (B, H, W, C) in [0, 1] to logits (B, num_classes) or features (B, 8 width)."""
    if self.initialization not in CONV_INITS:
      raise ValueError(f'PreActResNet18 initialization must be one of {sorted(CONV_INITS)}, '
                       f'got {self.initialization!r}.')
    kernel_init = CONV_INITS[self.initialization]
    h = normalize(x, self.mean, self.std)
    h = conv3x3(self.width, name='stem_conv', dtype=self.dtype, kernel_init=kernel_init)(h)
    h = tap(self, 'stem', h)
    for stage, (multiplier, strides) in enumerate(zip((1, 2, 4, 8), (1, 2, 2, 2)), start=1):
      for block in range(2):
        h = PreActBlock(self.width * multiplier, strides if block == 0 else 1,
                        dtype=self.dtype, kernel_init=kernel_init,
                        preactivated_shortcut=False,
                        name=f'stage{stage}_block{block + 1}')(h, train)
      h = tap(self, f'stage{stage}', h)
    h = nn.relu(BatchNorm(use_running_average=not train, dtype=self.dtype, name='final_bn')(h))
    head_init = torch_dense_init(h.shape[-1]) if self.initialization == 'torch' else {}
    return readout(h.mean(axis=(1, 2)), self.num_classes, output, dtype=self.dtype, **head_init)
