"""The robustness evaluator: clean accuracy and the worst case over a suite of attacks.

Modules, one job each:
  evaluator.py   `Evaluator`: a model's clean accuracy and robust accuracy under a suite, in
                 sharded batches, each attack only on the points still robust;
                 `from_config`, the trainer's PGD evaluator.
  classifier.py  `robustness(logits_fn, images, labels, eps=...)`: any JAX classifier.
  workdir.py     a training run's workdir: `load_config`, `load_model`, `workdir_config`
                 (saved config + overrides), `evaluate_workdir` (writes eval_<suite>.json/.npz).
  progress.py    resumable evaluation: the verdicts of finished batches, saved as they go.
  __main__.py    `python -m latentadv.evaluate --workdir=DIR [--config.eval.suite=autoattack ...]`.

The attacks, their settings (config.eval.<attack family>) and the suites are declared in
latentadv/attacks (attacks/registry.py). config.eval.norm sets every attack's threat model:
'linf' (default) or 'l2', with radius config.method.eps; the trainer's evaluations
(`from_config`) use config.method.norm, the threat model the run trains against.
"""

from latentadv.evaluate.classifier import robustness
from latentadv.evaluate.evaluator import Evaluator
from latentadv.evaluate.evaluator import from_config
from latentadv.evaluate.workdir import evaluate_workdir
from latentadv.evaluate.workdir import load_config
from latentadv.evaluate.workdir import load_model
from latentadv.evaluate.workdir import workdir_config

__all__ = ['Evaluator', 'evaluate_workdir', 'from_config', 'load_config', 'load_model',
           'robustness', 'workdir_config']
