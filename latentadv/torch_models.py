"""Plain torch.nn twins of the Flax classifiers (latentadv/models), for export and benchmarks.

Each twin computes what its Flax model computes, in NCHW, with the layout and parameter names
of the reference PyTorch code, so its state dict loads into that code:
  PreActResNet18  fast_adversarial (Wong et al. 2020), RobustBench's PreActResNet(PreActBlock,
                  [2, 2, 2, 2], bn_before_fc=True): conv1, layer1..layer4 of PreActBlocks
                  (bn1, conv1, bn2, conv2, shortcut.0 on the block's raw input), bn (final
                  BatchNorm), linear.
  WideResNet      TRADES, RobustBench's WideResNet: conv1, block1..block3 (.layer of
                  BasicBlocks: bn1, conv1, bn2, conv2, convShortcut on the pre-activated
                  input), bn1, fc.
  MnistCNN        fast_adversarial's MNIST nn.Sequential: keys 0 (conv), 2 (conv), 5 (linear),
                  7 (linear).
Every module maps images (B, C, H, W) in [0, 1] to logits (B, num_classes). Given `mean` and
`std` (C,) it first normalises its input with them; they are non-persistent buffers, so the
state dict holds exactly the reference keys (and `torch.save(module)` keeps them).

`TAPS` maps each latent tap of the Flax model (models/taps.py) to the submodule whose output is
that feature map, for code that perturbs it there with forward hooks (benchmarks/vs_pytorch.py).
This file imports only torch (`import latentadv` itself imports JAX): copied alone, it builds
the twins without JAX.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _register_normalization(module: nn.Module, mean: Sequence[float] | None,
                            std: Sequence[float] | None):
  """Gives `module` non-persistent buffers mean and std (1, C, 1, 1), or None for neither."""
  if (mean is None) != (std is None):
    raise ValueError('Pass both mean and std, or neither.')
  for name, values in (('mean', mean), ('std', std)):
    buffer = None if values is None else torch.tensor(values, dtype=torch.float32).view(
        1, -1, 1, 1)
    module.register_buffer(name, buffer, persistent=False)


def _normalize(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
  """(x - mean) / std for x (B, C, H, W) with `module`'s buffers; x itself without them."""
  return x if module.mean is None else (x - module.mean) / module.std


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
  """A bias-free 3x3 convolution with padding 1 (models/preact_resnet.py's conv3x3)."""
  return nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)


class PreActBlock(nn.Module):
  """BN-relu-conv3x3(stride)-BN-relu-conv3x3 plus a shortcut: the identity, or a strided 1x1
  conv (`shortcut`, a Sequential as in the reference) of the block's raw input x when the
  stride or the width changes. Maps (B, in_planes, H, W) to (B, planes, H/stride, W/stride)."""

  def __init__(self, in_planes: int, planes: int, stride: int = 1):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(in_planes)
    self.conv1 = _conv3x3(in_planes, planes, stride)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv2 = _conv3x3(planes, planes)
    self.shortcut = nn.Identity()
    if stride != 1 or in_planes != planes:
      self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """The block's output (B, planes, H/stride, W/stride) for x (B, in_planes, H, W)."""
    out = self.conv1(F.relu(self.bn1(x)))
    return self.conv2(F.relu(self.bn2(out))) + self.shortcut(x)


class PreActResNet18(nn.Module):
  """models/preact_resnet.py: normalisation, conv3x3 [stem], 4 stages of 2 PreActBlocks
  [stage1..stage4] of widths width * (1, 2, 4, 8) and strides (1, 2, 2, 2), then
  BN-relu-global average pool-linear. Maps (B, in_channels, H, W) to (B, num_classes).

  Flax -> torch: stem_conv -> conv1, stage{i}_block{j} -> layer{i}[j - 1], final_bn -> bn,
  head -> linear. RobustBench builds this layout as PreActResNet(PreActBlock, [2, 2, 2, 2],
  bn_before_fc=True) (width 64, 3 channels); its global pool is avg_pool2d(4), the same on
  32x32 inputs.
  """
  TAPS = {'stem': 'conv1', 'stage1': 'layer1', 'stage2': 'layer2', 'stage3': 'layer3',
          'stage4': 'layer4'}

  def __init__(self, num_classes: int = 10, width: int = 64, in_channels: int = 3,
               mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
    super().__init__()
    _register_normalization(self, mean, std)
    self.conv1 = _conv3x3(in_channels, width)
    channels = width
    for stage, (multiplier, stride) in enumerate(zip((1, 2, 4, 8), (1, 2, 2, 2)), start=1):
      planes = width * multiplier
      self.add_module(f'layer{stage}', nn.Sequential(PreActBlock(channels, planes, stride),
                                                     PreActBlock(planes, planes)))
      channels = planes
    self.bn = nn.BatchNorm2d(channels)
    self.linear = nn.Linear(channels, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Logits (B, num_classes) of images x (B, in_channels, H, W) in [0, 1]."""
    h = self.conv1(_normalize(self, x))
    h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
    return self.linear(F.relu(self.bn(h)).mean(dim=(2, 3)))


class BasicBlock(nn.Module):
  """TRADES' WideResNet block: BN-relu, then conv3x3(stride)-BN-relu-dropout-conv3x3, plus a
  shortcut: the identity, or a strided 1x1 conv (`convShortcut`) of the pre-activated input
  relu(bn1(x)) when the width or the stride changes (in a WideResNet they change together).
  Maps (B, in_planes, H, W) to (B, out_planes, H/stride, W/stride)."""

  def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float = 0.0):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(in_planes)
    self.relu1 = nn.ReLU()
    self.conv1 = _conv3x3(in_planes, out_planes, stride)
    self.bn2 = nn.BatchNorm2d(out_planes)
    self.relu2 = nn.ReLU()
    self.conv2 = _conv3x3(out_planes, out_planes)
    self.dropout = dropout
    self.convShortcut = None  # pylint: disable=invalid-name  # the reference's key
    if stride != 1 or in_planes != out_planes:
      self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """The block's output (B, out_planes, H/stride, W/stride) for x (B, in_planes, H, W);
    dropout is active in training mode only."""
    out = self.relu1(self.bn1(x))
    shortcut = x if self.convShortcut is None else self.convShortcut(out)
    out = self.relu2(self.bn2(self.conv1(out)))
    out = F.dropout(out, self.dropout, self.training)
    return self.conv2(out) + shortcut


class NetworkBlock(nn.Module):
  """A group of WideResNet blocks in `layer` (a Sequential); the first has the stride."""

  def __init__(self, blocks: int, in_planes: int, out_planes: int, stride: int,
               dropout: float = 0.0):
    super().__init__()
    self.layer = nn.Sequential(*(
        BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1,
                   dropout) for i in range(blocks)))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """The group's output (B, out_planes, H/stride, W/stride) for x (B, in_planes, H, W)."""
    return self.layer(x)


class WideResNet(nn.Module):
  """models/wide_resnet.py: normalisation, conv3x3 16 [stem], 3 groups of (depth - 4) / 6
  blocks [stage1..stage3] of widths 16 k, 32 k, 64 k (k = widen_factor) and strides 1, 2, 2,
  then BN-relu-global average pool-fc. Maps (B, in_channels, H, W) to (B, num_classes).

  Flax -> torch: stem_conv -> conv1, stage{i}_block{j} -> block{i}.layer[j - 1],
  final_bn -> bn1, head -> fc. RobustBench's WideResNet(depth, num_classes, widen_factor) has
  the same keys (3 channels); its global pool is avg_pool2d(8), the same on 32x32 inputs.
  """
  TAPS = {'stem': 'conv1', 'stage1': 'block1', 'stage2': 'block2', 'stage3': 'block3'}

  def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10,
               dropout: float = 0.0, in_channels: int = 3,
               mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
    super().__init__()
    if depth < 10 or (depth - 4) % 6:
      raise ValueError(f'WideResNet depth must be 6 n + 4 with n >= 1, got {depth}.')
    _register_normalization(self, mean, std)
    self.conv1 = _conv3x3(in_channels, 16)
    channels = 16
    for group, (multiplier, stride) in enumerate(zip((16, 32, 64), (1, 2, 2)), start=1):
      planes = multiplier * widen_factor
      self.add_module(f'block{group}',
                      NetworkBlock((depth - 4) // 6, channels, planes, stride, dropout))
      channels = planes
    self.bn1 = nn.BatchNorm2d(channels)
    self.relu = nn.ReLU()
    self.fc = nn.Linear(channels, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Logits (B, num_classes) of images x (B, in_channels, H, W) in [0, 1]."""
    h = self.conv1(_normalize(self, x))
    h = self.block3(self.block2(self.block1(h)))
    return self.fc(self.relu(self.bn1(h)).mean(dim=(2, 3)))


class MnistCNN(nn.Sequential):
  """models/mnist_cnn.py: conv16 4x4/2 (padding 1) - relu [stem] - conv32 4x4/2 - relu
  [stage1] - flatten (NCHW order) - linear 100 - relu - linear num_classes, on images
  (B, in_channels, H, W) of image_size (H, W); normalised first only if given mean and std
  (the reference reads raw pixels). Maps them to logits (B, num_classes).

  Flax -> torch: conv1 -> 0, conv2 -> 2, fc -> 5, head -> 7; Flax flattens NHWC, so the rows
  of fc's kernel are reordered to NCHW (latentadv/export.py).
  """
  TAPS = {'stem': '1', 'stage1': '3'}

  def __init__(self, num_classes: int = 10, image_size: tuple[int, int] = (28, 28),
               in_channels: int = 1, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None):
    height, width = image_size
    super().__init__(
        nn.Conv2d(in_channels, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * (height // 4) * (width // 4), 100), nn.ReLU(),
        nn.Linear(100, num_classes))
    _register_normalization(self, mean, std)

  def forward(self, x: torch.Tensor) -> torch.Tensor:  # pylint: disable=arguments-renamed
    """Logits (B, num_classes) of images x (B, in_channels, H, W) in [0, 1]."""
    return super().forward(_normalize(self, x))
