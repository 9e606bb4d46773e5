"""WideResNet-depth-widen (Zagoruyko & Komodakis, 2016) with latent taps."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from latentadv.models.common import normalize, readout, torch_kernel_init
from latentadv.models.preact_resnet import BatchNorm, PreActBlock, conv3x3
from latentadv.models.taps import tap


class WideResNet(nn.Module):
  """conv3x3 16 [stem] - 3 groups of (depth - 4) / 6 blocks [stage1..stage3] - BN - relu - avgpool.

  Group widths are 16 k, 32 k, 64 k (k = widen_factor) with strides 1, 2, 2; each block is a
  pre-activation block with dropout between its convolutions. Taps: 'stem' (B, H, W, 16),
  'stage1' (B, H, W, 16 k), 'stage2' (B, H/2, W/2, 32 k), 'stage3'; features (B, 64 k).
  `dtype` is the compute dtype (models/common.py); params and outputs are float32.

  Initialised as the reference WideResNet of TRADES (which SLAT's code also uses): He-normal
  fan-out convolutions (variance 2 / (kh kw C_out)), BatchNorm scale 1 and bias 0, the head's
  kernel PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) and its bias 0.
  """
  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  depth: int = 28
  widen_factor: int = 10
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, output: str = 'logits') -> jax.Array:
    """Maps images x (B, H, W, C) in [0, 1] to logits (B, num_classes) or features (B, 64 k).

    With train=True and dropout > 0 the caller must pass a 'dropout' rng.
    """
    if self.depth < 10 or (self.depth - 4) % 6:
      raise ValueError(f'WideResNet depth must be 6 n + 4 with n >= 1, got {self.depth}.')
    blocks_per_group = (self.depth - 4) // 6
    h = normalize(x, self.mean, self.std)
    h = conv3x3(16, name='stem_conv', dtype=self.dtype)(h)
    h = tap(self, 'stem', h)
    for group, (multiplier, strides) in enumerate(zip((16, 32, 64), (1, 2, 2)), start=1):
      for block in range(blocks_per_group):
        h = PreActBlock(multiplier * self.widen_factor, strides if block == 0 else 1,
                        self.dropout, self.dtype,
                        name=f'stage{group}_block{block + 1}')(h, train)
      h = tap(self, f'stage{group}', h)
    h = nn.relu(BatchNorm(use_running_average=not train, dtype=self.dtype, name='final_bn')(h))
    return readout(h.mean(axis=(1, 2)), self.num_classes, output, dtype=self.dtype,
                   kernel_init=torch_kernel_init)
