"""The base config unchanged (CIFAR-10, PreActResNet-18, SLAT); see latentadv/base_config.py."""

from latentadv import base_config


def get_config(preset: str = ''):
  """Returns the base config; `preset` is 'smoke', 'cpu' or '' (see latentadv/base_config.py)."""
  return base_config.get_config(preset)
