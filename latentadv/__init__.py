"""latentadv: fast adversarial training (SLAT and its baselines) in JAX/Flax."""

from latentadv.evaluate import load_model

__all__ = ['load_model']
