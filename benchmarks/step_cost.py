"""Cost of one jitted training step of every registered method, relative to standard training.

  python benchmarks/step_cost.py --model=mnist_cnn --output=step_cost_mnist.json
  python benchmarks/step_cost.py --model=preact_resnet18 --batch-size=128 --output=FILE.json

All methods are compiled first, then timed in interleaved rounds (method A, B, C, A, B, C, ...)
so that machine noise hits every method alike; the reported time is the median over rounds.
Each method runs with its own config file's settings (e.g. PGD-40 and TRADES-40 on MNIST,
10 steps on CIFAR; the soft-quantisation layer for soft_quant).
The JSON written is {"methods": {name: {"seconds": s, "relative": s / s_standard}},
"model": ..., "batch_size": ..., ...}.
"""

import importlib
import json
import os
import statistics
import sys
import time

import jax
import numpy as np
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from latentadv import compilation  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv import methods  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv import parallel
from latentadv import seeds
from latentadv import train_state
from latentadv import train
from latentadv.data import datasets

FLAGS = flags.FLAGS


def define_flags():
  """Defines this script's flags; called only when it runs as a script, so that other
  benchmarks (vs_pytorch.py) can import its helpers and define flags of the same names."""
  flags.DEFINE_string('model', 'mnist_cnn', 'Model registry name.')
  flags.DEFINE_integer('batch_size', 128, 'Global batch size.')
  flags.DEFINE_integer('rounds', 7, 'Interleaved timing rounds.')
  flags.DEFINE_integer('steps_per_round', 5, 'Steps timed back to back per method and round.')
  flags.DEFINE_string('output', None, 'Where to write the JSON results.')
  flags.DEFINE_integer('width', 0, 'PreActResNet width (0 = the config default of 64).')


def make_config(method: str, model: str, width: int, batch_size: int):
  """The config file of `method` for the model's dataset (configs/mnist_<method>.py for
  mnist_cnn, else configs/cifar_<method>.py), with the model, width (0 = the config's) and
  batch size set."""
  dataset = 'mnist' if model == 'mnist_cnn' else 'cifar'
  config = importlib.import_module(f'configs.{dataset}_{method}').get_config()
  config.model.name = model
  if width:
    config.model.preact_resnet18.width = width
  config.method.name = method
  config.optim.batch_size = batch_size
  return config


def random_batch(config, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Fixed random images (batch_size, H, W, C) in [0, 1] of the config's dataset shape and
  int32 labels (batch_size,) in [0, 10)."""
  shape = datasets.DATASETS[config.data.name].image_shape
  rng = np.random.default_rng(0)
  images = rng.random((batch_size, *shape), dtype=np.float32)
  labels = rng.integers(0, 10, batch_size).astype(np.int32)
  return images, labels


def compiled_step(config, mesh, images, labels):
  """(jitted step, state, batch, rng) of the method config.method.name as `config` sets it up
  (model, augmentation, optimizer), for images (B, H, W, C) and labels (B,); compiled and run
  once. With config.num_seeds = K > 1, the step of K models side by side (latentadv/seeds.py),
  every model on the same batch."""
  method = config.method.name
  seed_axis = seeds.SeedAxis(config, mesh)
  model = train_state.build_model(config)
  schedule = train_state.learning_rate_schedule(config.optim, 1000)
  tx = train_state.make_optimizer(config.optim, schedule)
  shape = images.shape[1:]
  carry = train_state.init_carry(config, shape)
  state = jax.device_put(
      seed_axis.stack([train_state.init_state(model, tx, jax.random.key(seed), shape, carry)
                       for seed in seed_axis.seeds]), seed_axis.state_sharding())
  step = train.jit_train_step(
      train.make_train_step(model.apply, methods.METHODS[method].loss, tx, schedule, config),
      state, mesh, seed_axis)
  batch = parallel.global_batch(seed_axis.stack([{'image': images, 'label': labels}] *
                                                seed_axis.num_seeds), mesh,
                                seed_axis.batch_sharding())
  rng = jax.device_put(seed_axis.keys(1), seed_axis.state_sharding())
  state, metrics = step(state, batch, rng)
  jax.block_until_ready(metrics)
  return step, state, batch, rng


def time_steps(entry: list, steps: int) -> float:
  """Seconds per step of `steps` back-to-back steps of entry = [step, state, batch, rng] (a
  compiled_step result as a list), blocking on the results; entry[1] becomes the new state."""
  step, state, batch, rng = entry
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch, rng)
  jax.block_until_ready((state, metrics))
  entry[1] = state
  return (time.perf_counter() - start) / steps


def write_results(output: str, results: dict, markdown: str | None = None):
  """Writes `results` as JSON to `output` and, when given, `markdown` to the .md beside it."""
  with open(output, 'w') as f:
    json.dump(results, f, indent=2)
  if markdown is not None:
    with open(os.path.splitext(output)[0] + '.md', 'w') as f:
      f.write(markdown + '\n')


def main(argv):
  del argv
  compilation.enable_cache()
  mesh = parallel.make_mesh()
  configs = {name: make_config(name, FLAGS.model, FLAGS.width, FLAGS.batch_size)
             for name in methods.METHODS}
  images, labels = random_batch(configs['standard'], FLAGS.batch_size)
  steps = {name: list(compiled_step(config, mesh, images, labels))
           for name, config in configs.items()}
  times = {name: [] for name in methods.METHODS}
  for _ in range(FLAGS.rounds):
    for name, entry in steps.items():
      times[name].append(time_steps(entry, FLAGS.steps_per_round))
  medians = {name: statistics.median(t) for name, t in times.items()}
  results = {
      'model': FLAGS.model, 'batch_size': FLAGS.batch_size, 'devices': jax.device_count(),
      'backend': jax.default_backend(), 'rounds': FLAGS.rounds,
      'steps_per_round': FLAGS.steps_per_round,
      'model_options': configs['standard'].model[FLAGS.model].to_dict(),
      'methods': {name: {'seconds': s, 'relative': s / medians['standard']}
                  for name, s in medians.items()},
  }
  print(f'{"method":<12}{"s/step":>10}{"x standard":>12}')
  for name, entry in results['methods'].items():
    print(f'{name:<12}{entry["seconds"]:>10.4f}{entry["relative"]:>12.2f}')
  if FLAGS.output:
    write_results(FLAGS.output, results)


if __name__ == '__main__':
  define_flags()
  app.run(main)
