"""EAE (our reading) on MNIST, the CNN of Wong et al., Adam, cyclic LR peak 5e-3, 10 epochs."""

from configs import default


def get_config(preset: str = ''):
  """Returns the config; `preset` is 'smoke', 'cpu' or '' (see configs/default.py)."""
  config = default.mnist(default.get_config())
  config.method.name = 'eae'
  return default.apply_preset(config, preset)
