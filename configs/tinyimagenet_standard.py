"""Standard (non-adversarial) training on Tiny-ImageNet, PreActResNet-18, eps 8/255, 30 epochs, cyclic LR peak 0.2, batch 64."""

from configs import default


def get_config(preset: str = ''):
  """Returns the config; `preset` is 'smoke', 'cpu' or '' (see configs/default.py)."""
  config = default.tiny_imagenet(default.get_config())
  config.method.name = 'standard'
  return default.apply_preset(config, preset)
