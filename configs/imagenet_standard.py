"""Standard (non-adversarial) training on ImageNet, ResNet-50, eps 4/255 (Wong et al. 2020's recipe, configs/default.py).

Presets: '' (eps 4/255), 'eps2' (2/255), 'smoke' (a tiny model, for checking a set-up).
"""

from configs import default


def get_config(preset: str = ''):
  """Returns the config; `preset` is '', 'eps2' or 'smoke'."""
  config = default.imagenet(default.get_config(), eps=2 / 255 if preset == 'eps2' else 4 / 255)
  config.method.name = 'standard'
  return default.apply_preset(config, '' if preset == 'eps2' else preset)
