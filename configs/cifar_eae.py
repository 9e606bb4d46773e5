"""EAE (our reading) on CIFAR-10, PreActResNet-18, 30 epochs, cyclic LR peak 0.2, batch 128."""

from configs import default


def get_config(preset: str = ''):
  """Returns the config; `preset` is 'smoke', 'cpu' or '' (see configs/default.py)."""
  config = default.get_config()
  config.method.name = 'eae'
  return default.apply_preset(config, preset)
