r"""Our evaluator against the tools users would pick instead: same model, same points, one run.

  python benchmarks/vs_autoattack.py --workdir=DIR --n_examples=1000 \
      --data_dir=../shared/data/cifar10 --output=FILE.json

On the first --n_examples test points of the workdir's dataset, with the latest checkpoint of
--workdir and the config saved there (overridable: --config.eval.apgd.steps=10 ...), it runs two
comparisons and times both sides:
  autoattack  ours: latentadv's `autoattack` suite (APGD-CE -> APGD-T -> FAB-T -> Square, with
              config.eval's settings); reference: AutoAttack (Croce & Hein 2020) on the model
              exported to PyTorch (latentadv/export.py), AutoAttack(model, norm, eps,
              version='standard', device='cpu', seed=0).run_standard_evaluation. If config.eval
              departs from AutoAttack's standard settings (100 APGD steps, 1 restart, 9 targets;
              100 FAB-T steps, 9 targets, 1 restart; 5,000 Square queries, p_init 0.8), e.g. to
              make a check quick, the reference runs version='custom' with the same settings,
              and the JSON and the table say so.
  pgd         ours: the `pgd` suite (PGD-k-r, step config.eval.pgd.step_size x eps, cross-entropy);
              reference: foolbox 3's LinfPGD (L2PGD in L2) on the exported model, k steps of
              abs_stepsize step_size x eps from a random start, run r times on the points no
              earlier run fooled. Ours counts a point fooled if ANY iterate is, foolbox only
              if its last iterate is: a stricter criterion on our side.
The threat model is config.eval.norm ('linf' or 'l2') with radius eps = config.method.eps.
A point is robust if it is classified correctly and no attack fooled it; the reference's
flags are the torch model's predictions on the clean points and on AutoAttack's x_adv.

Timing: ours runs each suite twice (--our_runs=1: once, e.g. on 1,000 points after a 200-point
comparison filled the cache; the one run is then reported as both) with the same key, each time
with a new Evaluator after jax.clear_caches(). The first run compiles every program (once per
attack and padded batch size) unless the persistent compilation cache
(latentadv/compilation.py) holds it already:
run the benchmark with JAX_COMPILATION_CACHE_DIR set to an empty directory for a cold start.
The second run is what a later invocation sees: every program loaded from the persistent
cache. "seconds" is the second run's total (loading included), "run_seconds" the same without
the loading ("cache_load_seconds"); "first_run_seconds" is the first run's total and
"compile_seconds" the part of it spent tracing, lowering and compiling (each program's
`lower(...).compile()` timed apart, as evaluate.Evaluator records it).
The reference's seconds include its clean pass (and AutoAttack's checks of the model). Torch
runs eagerly on CPU with torch.set_num_threads(os.cpu_count()) (--torch_threads), as XLA on CPU
uses every core; the comparisons run one after the other, never concurrently. Time on a quiet
machine: with other jobs on the cores, torch's threads wait for each other (a forward and
backward pass of the MNIST CNN took 240 ms with 2 threads on 2 busy cores, 0.6 ms with 1).

Writes FILE.json,
  {"workdir", "n_examples", "eps", "norm", "dataset", "model",
   "clean": {"ours", "reference", "agreement"},
   "autoattack": {"ours": {"seconds", "run_seconds", "cache_load_seconds", "first_run_seconds",
                           "compile_seconds", "robust_accuracy", "clean_accuracy",
                           "per_attack" (of each run: robust accuracy, settings, seconds,
                           compile_seconds, run_seconds, batch_sizes), "runs_identical",
                           "persistent_cache" (whether it was on)},
                  "reference": {"seconds", "robust_accuracy", "version" ('standard' or
                                'custom'), "settings", "implementation", "per_attack" (from
                                AutoAttack's report; an attack it skipped, no point being left,
                                is absent), "log" (its messages)},
                  "agreement" (fraction of points with the same robust flag),
                  "only_ours_robust", "only_reference_robust", "seconds_ratio" (ours /
                  reference)},
   "pgd": {the same, "reference" being foolbox's: "seconds", "robust_accuracy",
           "implementation", "settings"},
   "torch_threads", "cpu_count", "jax_backend", "jax_devices", "versions"},
FILE.md (the same as a markdown table) and FILE.npz (per example: index, label, correct and
robust flags of each side).

The references are optional dependencies, all in the `bench` extra (pip install -e
'.[bench]'): torch, foolbox and AutoAttack as the PyPI package `pyautoattack`, a repackaging of
the official code (its attack files are the official ones up to imports and whitespace; its
AutoAttack class takes keyword arguments, `batch_size` for `bs`, and logs through `logging`).
With --autoattack_path=DIR the official code itself runs instead: DIR holds its `autoattack`
package (a clone of github.com/fra31/auto-attack, not on PyPI).
"""

import os
import re
import sys
import time

import foolbox
import jax
import ml_collections
import numpy as np
import torch
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import throughput  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv import base_config
from latentadv import compilation
from latentadv import evaluate
from latentadv import export
from latentadv import parallel
from latentadv import train_state
from latentadv.attacks import registry
from latentadv.data import readers

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Training run to evaluate (a directory with config.json).')
flags.DEFINE_integer('n_examples', 1000, 'Evaluate the first n test examples.')
flags.DEFINE_string('data_dir', '', 'Canonical data files of the workdir\'s dataset ("" = the '
                    'workdir\'s config.data).')
flags.DEFINE_string('autoattack_path', '', 'Directory holding the official `autoattack` package '
                    '(a clone of github.com/fra31/auto-attack); "" = the pyautoattack package.')
flags.DEFINE_integer('torch_threads', 0, 'torch.set_num_threads (0 = os.cpu_count()).')
flags.DEFINE_integer('our_runs', 2, 'Runs of our suites: 2 (a first run, then one loading every '
                     'program from the persistent cache) or 1 (one run, loading what the cache '
                     'holds: for long comparisons after a short one filled the cache).',
                     lower_bound=1, upper_bound=2)
flags.DEFINE_string('output', None, 'Where to write the JSON results (the .md and .npz beside).')
flags.mark_flag_as_required('workdir')
config_flags.DEFINE_config_dict(
    'config', base_config.get_config(),
    'Overrides of the saved config, e.g. --config.eval.apgd.steps=10 --config.eval.batch_size=250.')

# AutoAttack's standard version (autoattack.py, set_version('standard')) in config.eval's terms.
AUTOATTACK_STANDARD = {'apgd.steps': 100, 'apgd.restarts': 1, 'apgd.targets': 9,
                       'fab.steps': 100, 'fab.targets': 9, 'fab.restarts': 1,
                       'square.queries': 5000, 'square.p_init': 0.8}
REFERENCE_SEED = 0
TORCH_NORMS = {'linf': 'Linf', 'l2': 'L2'}
FOOLBOX_PGD = {'linf': foolbox.attacks.LinfPGD, 'l2': foolbox.attacks.L2PGD}
# AutoAttack's line after each attack, e.g. "robust accuracy after APGD-CE: 43.75% (total time
# 12.3 s)".
_AFTER_ATTACK = re.compile(r'robust accuracy after (\S+): ([\d.]+)% \(total time ([\d.]+) s\)')


class Transcript:
  """Stands in for AutoAttack's logger, the official one (`log`) or pyautoattack's (a
  logging.Logger: `debug`, `info`, `warning`): keeps every message in `lines` and passes it on
  to absl logging."""

  def __init__(self):
    self.lines = []

  def log(self, message: str):
    """Records `message`."""
    self.lines.append(message)
    logging.info('AutoAttack: %s', message)

  debug = info = warning = log


def check_comparable(config: ml_collections.ConfigDict):
  """Raises app.UsageError for settings the references cannot match: a loss other than
  cross-entropy (foolbox's PGD ascends cross-entropy) or FAB-T restarts (AutoAttack runs FAB-T
  once per target)."""
  if config.eval.pgd.loss != 'ce':
    raise app.UsageError(f'config.eval.pgd.loss is {config.eval.pgd.loss!r}: foolbox\'s PGD '
                         'ascends the cross-entropy, so compare with --config.eval.pgd.loss=ce.')
  if config.eval.fab.restarts != 1:
    raise app.UsageError('AutoAttack runs FAB-T once per target: compare with '
                         '--config.eval.fab.restarts=1.')


def ours(suite: str, apply_fn, variables, config: ml_collections.ConfigDict,
         images: np.ndarray, labels: np.ndarray) -> tuple[dict, dict[str, np.ndarray]]:
  """latentadv's `suite` on images (N, H, W, C) and labels (N,), run --our_runs times (2 by
  default) with the same key, each run by a new Evaluator after clearing JAX's in-memory
  caches: the second run loads its programs from the persistent compilation cache (if on) that
  the first filled. With one run, it is reported as both (first and cached) runs.

  Returns (summary, per_example) of the second run; per_example is Evaluator.evaluate's.
  summary: seconds, run_seconds, cache_load_seconds (the second run's total, without and
  with the loading), first_run_seconds, compile_seconds (the first run's total and its
  compilation), robust_accuracy, clean_accuracy, per_attack {'first_run', 'cached_run':
  {attack: robust accuracy after it, settings, seconds, compile_seconds, run_seconds,
  batch_sizes}}, our_runs, runs_identical (the two runs' robust flags are the same; None
  with one run), persistent_cache.
  """
  rng = jax.random.key(config.seed + 2)  # as evaluate.evaluate_workdir
  runs = []
  for _ in range(FLAGS.our_runs):
    jax.clear_caches()
    evaluator = evaluate.Evaluator(apply_fn, parallel.make_mesh(),
                                   registry.build_suite(suite, config.eval, config.method.eps),
                                   eps=config.method.eps, batch_size=config.eval.batch_size)
    runs.append(evaluator.evaluate(variables, images, labels, rng))
  (first, first_examples), (record, per_example) = runs[0], runs[-1]
  summary = {
      'seconds': record['seconds'], 'run_seconds': record['run_seconds'],
      'cache_load_seconds': record['compile_seconds'], 'first_run_seconds': first['seconds'],
      'compile_seconds': first['compile_seconds'],
      'robust_accuracy': record['robust_accuracy'], 'clean_accuracy': record['clean_accuracy'],
      'per_attack': {run: {name: {'robust_accuracy': result[f'{name}_accuracy'], **attack}
                           for name, attack in result['attacks'].items()}
                     for run, result in (('first_run', first), ('cached_run', record))},
      'our_runs': len(runs),
      'runs_identical': (bool(np.array_equal(first_examples['robust'], per_example['robust']))
                         if len(runs) == 2 else None),
      'persistent_cache': jax.config.jax_compilation_cache_dir is not None,
  }
  return summary, per_example


def torch_correct(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                  batch_size: int) -> np.ndarray:
  """(N,) bool: the torch module classifies x (N, C, H, W) as y (N,), in batches."""
  with torch.no_grad():
    return np.concatenate([
        (module(x[start:start + batch_size]).argmax(1) == y[start:start + batch_size]).numpy()
        for start in range(0, len(y), batch_size)])


def autoattack_class() -> tuple[type, str]:
  """(AutoAttack, a description of the implementation): the official code from
  --autoattack_path, else pyautoattack's."""
  if FLAGS.autoattack_path:
    sys.path.insert(0, os.path.abspath(FLAGS.autoattack_path))
    import autoattack  # pylint: disable=g-import-not-at-top
    return autoattack.AutoAttack, f'official autoattack ({os.path.dirname(autoattack.__file__)})'
  import pyautoattack  # pylint: disable=g-import-not-at-top
  return pyautoattack.AutoAttack, f'pyautoattack {pyautoattack.__version__}'


def set_custom_settings(adversary, settings: dict):
  """Gives a version='custom' AutoAttack `adversary` the standard version's attacks in its
  order, with `settings` (AUTOATTACK_STANDARD's keys) instead of the standard values. APGD and
  APGD-T are rebuilt like AutoAttack builds them, since APGD fixes its step-size checkpoints
  from n_iter at construction; FAB-T and Square read theirs when they run."""
  adversary.attacks_to_run = list(registry.SUITES['autoattack'])  # AutoAttack's names, in its order
  apgd, targeted = adversary.apgd, adversary.apgd_targeted
  common = dict(norm=apgd.norm, eps=apgd.eps, seed=apgd.seed, eot_iter=apgd.eot_iter,
                rho=apgd.thr_decr, device=apgd.device, logger=apgd.logger)
  adversary.apgd = type(apgd)(adversary.model, n_iter=settings['apgd.steps'],
                              n_restarts=settings['apgd.restarts'], **common)
  adversary.apgd_targeted = type(targeted)(adversary.model, n_iter=settings['apgd.steps'],
                                           n_restarts=1,
                                           n_target_classes=settings['apgd.targets'], **common)
  adversary.fab.n_iter = settings['fab.steps']
  adversary.fab.n_target_classes = settings['fab.targets']
  adversary.square.n_queries = settings['square.queries']
  adversary.square.p_init = settings['square.p_init']


def reference_autoattack(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                         config: ml_collections.ConfigDict) -> tuple[dict, np.ndarray]:
  """AutoAttack on the torch module, points x (N, C, H, W) in [0, 1] with labels y (N,), with
  config.eval's settings (version 'standard' if they are AutoAttack's, else 'custom') in
  config.eval.norm with radius config.method.eps, in batches of config.eval.batch_size.

  Returns (summary, robust (N,) bool: clean point and x_adv classified correctly). summary:
  seconds, robust_accuracy, version, settings, implementation, per_attack {attack: robust
  accuracy after it and its seconds, from AutoAttack's report}, log (its messages).
  """
  settings = {key: config.eval[key.split('.')[0]][key.split('.')[1]]
              for key in AUTOATTACK_STANDARD}
  version = 'standard' if settings == AUTOATTACK_STANDARD else 'custom'
  auto_attack, implementation = autoattack_class()
  batch_size = config.eval.batch_size
  transcript = Transcript()
  start = time.perf_counter()
  adversary = auto_attack(module, norm=TORCH_NORMS[config.eval.norm], eps=config.method.eps,
                          version=version, device='cpu', seed=REFERENCE_SEED)
  adversary.logger = adversary.apgd.logger = adversary.apgd_targeted.logger = transcript
  if version == 'custom':
    set_custom_settings(adversary, settings)
  if FLAGS.autoattack_path:  # the official API
    x_adv = adversary.run_standard_evaluation(x, y, bs=batch_size)
  else:  # pyautoattack: keyword batch_size, returns (x_adv, y_adv)
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
  seconds = time.perf_counter() - start
  robust = torch_correct(module, x, y, batch_size) & torch_correct(module, x_adv, y, batch_size)
  per_attack, previous = {}, 0.0
  for line in transcript.lines:
    if match := _AFTER_ATTACK.search(line):
      total = float(match[3])
      per_attack[match[1].lower()] = {'robust_accuracy': float(match[2]) / 100,
                                      'seconds': total - previous}
      previous = total
  summary = {'seconds': seconds, 'robust_accuracy': float(robust.mean()), 'version': version,
             'settings': settings, 'implementation': implementation, 'per_attack': per_attack,
             'log': transcript.lines}
  return summary, robust


def reference_pgd(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                  config: ml_collections.ConfigDict) -> tuple[dict, np.ndarray]:
  """foolbox's PGD (LinfPGD or L2PGD, config.eval.norm) with our pgd suite's steps, step size
  (step_size x eps, absolute) and random start, config.eval.pgd.restarts runs, each on the
  points still robust, in batches of config.eval.batch_size, on the torch module.

  Returns (summary, robust (N,) bool: classified correctly and fooled by no run). summary:
  seconds (including the clean pass), robust_accuracy, implementation, settings.
  """
  eval_config, eps = config.eval, config.method.eps
  settings = dict(steps=eval_config.pgd.steps, abs_stepsize=eval_config.pgd.step_size * eps,
                  random_start=True, restarts=eval_config.pgd.restarts)
  attack = FOOLBOX_PGD[eval_config.norm](steps=settings['steps'],
                                        abs_stepsize=settings['abs_stepsize'], random_start=True)
  model = foolbox.PyTorchModel(module, bounds=(0, 1), device='cpu')
  batch_size = eval_config.batch_size
  start = time.perf_counter()
  robust = torch_correct(module, x, y, batch_size)
  for _ in range(settings['restarts']):
    remaining = np.flatnonzero(robust)
    if not len(remaining):
      break
    for chunk in np.split(remaining, range(batch_size, len(remaining), batch_size)):
      index = torch.from_numpy(chunk)
      _, _, success = attack(model, x[index], y[index], epsilons=eps)
      robust[chunk[success.numpy()]] = False
  summary = {'seconds': time.perf_counter() - start, 'robust_accuracy': float(robust.mean()),
             'implementation': f'foolbox {foolbox.__version__} {type(attack).__name__}',
             'settings': settings}
  return summary, robust


def comparison(ours_summary: dict, ours_robust: np.ndarray, reference_summary: dict,
               reference_robust: np.ndarray) -> dict:
  """{"ours", "reference", "agreement" (fraction of points with the same robust flag),
  "only_ours_robust", "only_reference_robust" (counts), "seconds_ratio" (ours / reference)}."""
  return {'ours': ours_summary, 'reference': reference_summary,
          'agreement': float(np.mean(ours_robust == reference_robust)),
          'only_ours_robust': int(np.sum(ours_robust & ~reference_robust)),
          'only_reference_robust': int(np.sum(~ours_robust & reference_robust)),
          'seconds_ratio': ours_summary['seconds'] / reference_summary['seconds']}


def table(results: dict) -> str:
  """Markdown table of the two comparisons: seconds of each side, ratio, robust accuracies,
  agreement."""
  lines = ['| comparison | reference | ours s, cached (loading) | ours s, first run (compiling) '
           '| reference s | '
           'ours / reference | ours robust % | reference robust % | agreement % | '
           'only ours robust | only reference robust |',
           '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |']
  settings = results['pgd']['reference']['settings']
  names = {'autoattack': f'AutoAttack ({results["autoattack"]["reference"]["version"]})',
           'pgd': f'PGD-{settings["steps"]}-{settings["restarts"]}'}
  for key, name in names.items():
    entry = results[key]
    ours_entry, reference = entry['ours'], entry['reference']
    lines.append(
        f'| {name} | {reference["implementation"]} | {ours_entry["seconds"]:.2f} '
        f'({ours_entry["cache_load_seconds"]:.2f}) | {ours_entry["first_run_seconds"]:.2f} '
        f'({ours_entry["compile_seconds"]:.2f}) | {reference["seconds"]:.2f} | '
        f'{entry["seconds_ratio"]:.2f} | {100 * ours_entry["robust_accuracy"]:.2f} | '
        f'{100 * reference["robust_accuracy"]:.2f} | {100 * entry["agreement"]:.2f} | '
        f'{entry["only_ours_robust"]} | {entry["only_reference_robust"]} |')
  return '\n'.join(lines)


def description(results: dict) -> str:
  """The markdown paragraph above the table: what was compared, on what, with which settings."""
  versions = results['versions']
  reference = results['autoattack']['reference']
  runs = ('seconds of a second run loading every program'
          if results['autoattack']['ours']['our_runs'] == 2 else
          'seconds of one run (--our_runs=1) loading the programs it found')
  cache = 'on' if results['autoattack']['ours']['persistent_cache'] else 'off'
  custom = ('' if reference['version'] == 'standard' else
            ' **Reduced settings** (AutoAttack version \'custom\', both sides alike): '
            + ', '.join(f'{key} {value}' for key, value in reference['settings'].items()) + '.')
  return (f'{results["workdir"]} ({results["model"]}, {results["dataset"]}): first '
          f'{results["n_examples"]} test points, eps {results["eps"]:.5g} '
          f'({results["norm"]}); clean accuracy {100 * results["clean"]["ours"]:.2f} % (ours) / '
          f'{100 * results["clean"]["reference"]:.2f} % (exported torch model). Ours: JAX '
          f'{versions["jax"]} ({results["jax_devices"]} {results["jax_backend"]} device(s)), '
          f'{runs} from the persistent compilation cache ({cache}); '
          f'references: torch '
          f'{versions["torch"]} ({results["torch_threads"]} thread(s)).{custom}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  compilation.enable_cache()
  overrides = config_flags.get_override_values(FLAGS['config'])
  if FLAGS.data_dir:
    overrides.update({'data.source': 'local', 'data.dir': FLAGS.data_dir})
  config = evaluate.workdir_config(FLAGS.workdir, base_config.get_config(), overrides)
  check_comparable(config)
  try:
    export.check_exportable(config)
  except export.ExportError as error:
    sys.exit(' '.join(f'ExportError: {error}'.split()))
  torch_threads = FLAGS.torch_threads or os.cpu_count()
  torch.set_num_threads(torch_threads)
  torch.manual_seed(REFERENCE_SEED)  # foolbox's random starts
  model, variables = train_state.restore_variables(FLAGS.workdir, config)
  module = export.to_torch(config, variables)
  images, labels = readers.load_split(config.data, 'test', 0, 1)
  images, labels = images[:FLAGS.n_examples], labels[:FLAGS.n_examples]
  x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
  y = torch.from_numpy(labels).long()
  reference_correct = torch_correct(module, x, y, config.eval.batch_size)

  results = {'workdir': FLAGS.workdir, 'n_examples': len(labels), 'eps': config.method.eps,
             'norm': config.eval.norm, 'dataset': config.data.name, 'model': config.model.name}
  per_example = {'index': np.arange(len(labels)), 'label': labels,
                 'reference_correct': reference_correct}
  for suite, reference in (('autoattack', reference_autoattack), ('pgd', reference_pgd)):
    ours_summary, ours_examples = ours(suite, model.apply, variables, config, images, labels)
    logging.info('ours %s: %s', suite, ours_summary)
    reference_summary, reference_robust = reference(module, x, y, config)
    logging.info('reference %s: %s', suite, reference_summary)
    results[suite] = comparison(ours_summary, ours_examples['robust'], reference_summary,
                                reference_robust)
    per_example.update({'ours_correct': ours_examples['correct'],
                        f'ours_{suite}_robust': ours_examples['robust'],
                        f'reference_{suite}_robust': reference_robust})
  results['clean'] = {'ours': float(per_example['ours_correct'].mean()),
                      'reference': float(reference_correct.mean()),
                      'agreement': float(np.mean(per_example['ours_correct'] == reference_correct))}
  results.update({
      'torch_threads': torch_threads, 'cpu_count': os.cpu_count(),
      'jax_backend': jax.default_backend(), 'jax_devices': jax.device_count(),
      'versions': {'jax': jax.__version__, 'torch': torch.__version__,
                   'foolbox': foolbox.__version__, 'numpy': np.__version__,
                   'autoattack': results['autoattack']['reference']['implementation']},
  })
  print(f'{description(results)}\n\n{table(results)}')
  if FLAGS.output:
    throughput.write_results(FLAGS.output, results, f'{description(results)}\n\n{table(results)}')
    np.savez_compressed(os.path.splitext(FLAGS.output)[0] + '.npz', **per_example)


if __name__ == '__main__':
  app.run(main)
