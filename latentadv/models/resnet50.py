"""ResNet-50 in the layout of torchvision's resnet50 (ResNet v1.5), with latent taps."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from latentadv.models.common import he_kernel_init, normalize, readout, torch_dense_init
from latentadv.models.preact_resnet import BatchNorm, Initializer
from latentadv.models.convolution import Conv
from latentadv.models.taps import tap

# The convolutions' initialisation by name (config.model.resnet50.init). 'torch' is
# torchvision's: kaiming_normal_(mode='fan_out', nonlinearity='relu'), N(0, 2 / (kh kw C_out)).
INITS = {'torch': he_kernel_init}
# Bottleneck blocks per stage, and the stride of each stage's first block.
STAGE_BLOCKS = (3, 4, 6, 3)
STAGE_STRIDES = (1, 2, 2, 2)
# A bottleneck's output width over its inner width.
EXPANSION = 4


def conv(features: int, kernel_size: int, strides: int = 1, name: str | None = None,
         dtype: Any = jnp.float32, kernel_init: Initializer = he_kernel_init) -> nn.Conv:
  """A bias-free square convolution with PyTorch's padding kernel_size // 2, computing in dtype.

  Maps (B, H, W, C) to (B, ceil(H / strides), ceil(W / strides), features) for odd kernels.
  """
  return Conv(features, (kernel_size, kernel_size), strides=strides,
              padding=kernel_size // 2, use_bias=False, kernel_init=kernel_init, name=name,
              dtype=dtype)


class Bottleneck(nn.Module):
  """torchvision's Bottleneck: conv1x1-BN-relu-conv3x3-BN-relu-conv1x1-BN, + shortcut, relu.

  The stride is on the 3x3 convolution (ResNet v1.5). The shortcut is the identity, or a
  strided 1x1 conv + BN of the block's input when the stride or the width changes. Maps
  (B, H, W, C) to (B, H/strides, W/strides, 4 features), computing in `dtype`. With
  `zero_init_residual` the last BN's scale starts at 0, so the block starts as its shortcut.
  """
  features: int
  strides: int = 1
  zero_init_residual: bool = False
  dtype: Any = jnp.float32
  kernel_init: Initializer = he_kernel_init

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Applies the block; BatchNorm uses batch statistics iff train."""
    block_conv = functools.partial(conv, dtype=self.dtype, kernel_init=self.kernel_init)
    norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
    out_features = self.features * EXPANSION
    out = nn.relu(norm(name='bn1')(block_conv(self.features, 1, name='conv1')(x)))
    out = nn.relu(norm(name='bn2')(block_conv(self.features, 3, self.strides, 'conv2')(out)))
    last_scale = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
    out = norm(scale_init=last_scale, name='bn3')(block_conv(out_features, 1, name='conv3')(out))
    shortcut = x
    if self.strides != 1 or x.shape[-1] != out_features:
      shortcut = norm(name='shortcut_bn')(
          block_conv(out_features, 1, self.strides, 'shortcut_conv')(x))
    return nn.relu(out + shortcut)


class ResNet50(nn.Module):
  """conv7x7/2-BN-relu-maxpool3x3/2 [stem] - 4 stages of 3, 4, 6, 3 Bottlenecks
  [stage1..stage4] - avgpool - head.

  torchvision's resnet50 at width 64 (25,557,032 parameters with 1000 classes). Inner widths
  are width * (1, 2, 4, 8), outputs 4 times that, strides (1, 2, 2, 2). Taps, as
  PreActResNet18's (the stem's output and every stage's): 'stem' (B, H/4, W/4, width) after
  the max-pool, 'stage1' (B, H/4, W/4, 4 width), 'stage2' (B, H/8, W/8, 8 width), 'stage3'
  (B, H/16, W/16, 16 width), 'stage4' (B, H/32, W/32, 32 width) (sizes rounded up); features
  (B, 32 width). Any input size works; at 32x32 'stage4' is 1x1, where the taps' per-channel
  spatial clip leaves no room for a perturbation. `dtype` is the compute dtype
  (models/common.py); params and outputs are float32.

  Initialisation (`initialization`, config key `init`): 'torch' is torchvision's: convolution
  kernels He-normal fan-out N(0, 2 / (kh kw C_out)), BatchNorm scale 1 and bias 0, the head's
  kernel and bias nn.Linear's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = 32 width.
  `zero_init_residual` (torchvision's option) starts each block's last BN scale at 0.
  """
  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  width: int = 64
  initialization: str = 'torch'
  zero_init_residual: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, output: str = 'logits') -> jax.Array:
    """Maps images x (B, H, W, C) in [0, 1] to logits (B, num_classes) or features (B, 32 width)."""
    if self.initialization not in INITS:
      raise ValueError(f'ResNet50 initialization must be one of {sorted(INITS)}, '
                       f'got {self.initialization!r}.')
    kernel_init = INITS[self.initialization]
    h = normalize(x, self.mean, self.std)
    h = conv(self.width, 7, 2, 'stem_conv', self.dtype, kernel_init)(h)
    h = nn.relu(BatchNorm(use_running_average=not train, dtype=self.dtype, name='stem_bn')(h))
    h = nn.max_pool(h, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    h = tap(self, 'stem', h)
    for stage, (blocks, strides) in enumerate(zip(STAGE_BLOCKS, STAGE_STRIDES), start=1):
      for block in range(blocks):
        h = Bottleneck(self.width * 2 ** (stage - 1), strides if block == 0 else 1,
                       self.zero_init_residual, self.dtype, kernel_init,
                       name=f'stage{stage}_block{block + 1}')(h, train)
      h = tap(self, f'stage{stage}', h)
    return readout(h.mean(axis=(1, 2)), self.num_classes, output, dtype=self.dtype,
                   **torch_dense_init(h.shape[-1]))
