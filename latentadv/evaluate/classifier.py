"""Robustness of any JAX classifier: `robustness(logits_fn, images, labels, eps=...)`.

The same evaluator as a workdir's (evaluate/evaluator.py) on a plain function: every device
JAX sees, the batches sharded over them, the attacks' settings from the registry's defaults
(AutoAttack's standard values for apgd-ce, apgd-t, fab-t and square), overridable.
"""

from collections.abc import Mapping, Sequence

import jax
import ml_collections
import numpy as np

from latentadv import parallel
from latentadv.attacks import loops
from latentadv.attacks import norms
from latentadv.attacks import registry
from latentadv.evaluate.evaluator import Evaluator


def robustness(logits_fn, images: np.ndarray, labels: np.ndarray, *, eps: float,
               norm: str = 'linf', suite: str | Sequence[str] = 'autoattack',
               batch_size: int = 256, seed: int = 0,
               settings: Mapping[str, Mapping] | None = None
               ) -> tuple[dict, dict[str, np.ndarray]]:
  """Clean and robust accuracy of the classifier `logits_fn` under the attack `suite`.

  logits_fn: any jittable function of images x (B, H, W, C) float32 in [0, 1] to logits
    (B, classes); parameters it closes over are passed to the compiled programs as arguments.
  images: (N, H, W, C) uint8 or float32 in [0, 1]; labels: (N,) int; the same arrays in
    every process.
  eps: the radius in the threat model `norm` ('linf' or 'l2'), in pixel units.
  suite: a suite name of attacks/registry.py ('autoattack', 'pgd', 'apgd-ce', ...) or a
    sequence of attack names run in order, each on the points the ones before left robust.
  batch_size: global batch size, a multiple of the device count; the verdicts depend on it
    (each batch draws its own random starts), not on the device count.
  seed: the attacks' key is jax.random.key(seed).
  settings: overrides of the attacks' settings, keyed as config.eval, e.g.
    {'apgd': {'steps': 20}, 'pgd': {'restarts': 2}}.

  Returns (record, per_example) as Evaluator.evaluate: record has clean_accuracy,
  robust_accuracy, <attack>_accuracy and each attack's settings and seconds; per_example has
  (N,) arrays index, label, correct, robust, fooled_by_<attack> (and fab_<norm>_norm).
  """
  if norm not in norms.NORMS:
    raise ValueError(f'Unknown norm {norm!r}; valid: {", ".join(norms.NORMS)}.')
  eval_config = ml_collections.ConfigDict(dict(norm=norm, attack_loops=loops.LOOPS[0]))
  for key, default_config in registry.SETTINGS.items():
    eval_config[key] = default_config()
  eval_config.lock()  # a misspelt setting is an error
  for key, values in (settings or {}).items():
    if key not in registry.SETTINGS:
      raise ValueError(f'Unknown attack settings {key!r}; valid: '
                       f'{", ".join(registry.SETTINGS)}.')
    eval_config[key].update(values)
  attacks = registry.build_suite(suite, eval_config, eps)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(batch_size, 'batch_size', mesh)
  evaluator = Evaluator(lambda variables, x, train: logits_fn(x), mesh, attacks, eps=eps,
                        batch_size=batch_size)
  return evaluator.evaluate({}, images, labels, jax.random.key(seed))
