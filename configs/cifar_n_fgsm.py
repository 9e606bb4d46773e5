"""N-FGSM on CIFAR-10, PreActResNet-18, eps 8/255, 30 epochs, cyclic LR peak 0.2, batch 128."""

from latentadv import base_config


def get_config(preset: str = ''):
  """Returns the config; `preset` is 'smoke', 'cpu' or '' (see latentadv/base_config.py)."""
  config = base_config.get_config()
  base_config.set_method(config, 'n_fgsm')
  return base_config.apply_preset(config, preset)
