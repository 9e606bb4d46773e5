"""latentadv: fast adversarial training (SLAT and its baselines) in JAX/Flax."""

from latentadv.evaluate import load_model
from latentadv.evaluate import robustness

__all__ = ['load_model', 'robustness']
