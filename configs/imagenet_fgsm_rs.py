"""FGSM-RS on ImageNet, ResNet-50, eps 4/255 (Wong et al. 2020's recipe, latentadv/base_config.py).

Presets: '' (eps 4/255), 'eps2' (2/255), 'smoke' (a tiny model, for checking a set-up).
"""

from latentadv import base_config


def get_config(preset: str = ''):
  """Returns the config; `preset` is '', 'eps2' or 'smoke'."""
  config = base_config.imagenet(base_config.get_config(), eps=2 / 255 if preset == 'eps2' else 4 / 255)
  base_config.set_method(config, 'fgsm_rs')
  return base_config.apply_preset(config, '' if preset == 'eps2' else preset)
