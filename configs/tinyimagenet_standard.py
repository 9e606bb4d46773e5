"""Standard (non-adversarial) training on Tiny-ImageNet, PreActResNet-18, eps 8/255, 30 epochs, cyclic LR peak 0.2, batch 64."""

from latentadv import base_config


def get_config(preset: str = ''):
  """Returns the config; `preset` is 'smoke', 'cpu' or '' (see latentadv/base_config.py)."""
  config = base_config.tiny_imagenet(base_config.get_config())
  base_config.set_method(config, 'standard')
  return base_config.apply_preset(config, preset)
