"""Several seeds of one recipe trained as one program: a leading seed axis on the train state.

With config.num_seeds = K > 1 the trainer stacks K train states (params, BatchNorm statistics,
optimizer state, method carry) along a new leading axis and maps the one-seed train step over
it (`jax.vmap`, or unrolled on CPU: see config.seed_loop below), so one jitted step trains K
models on K batches. Model k uses the seed
config.seed + k for everything a single run derives from its seed (initialisation, batch
order, augmentation, attack noise, evaluation keys): it is the training of a single run with
--config.seed=config.seed+k, up to float rounding (XLA may group the K models' convolutions
differently from one model's). With K = 1 there is no seed axis: state, checkpoints and
results are exactly a single run's.

How the step runs the K models (config.seed_loop):
  'vmap'    `jax.vmap` of the one-seed step: one batched computation, which fills an
            accelerator that one model at batch 128 leaves mostly idle. Batched over the seed
            axis, a convolution with per-seed kernels becomes a grouped convolution.
  'unroll'  the one-seed step traced once per seed inside the same jitted program, the models
            computed one after another. XLA:CPU runs grouped convolutions several times slower
            than K separate ones (docs/performance.md), so this is what pays there; it costs K
            times the compile time of one step.
  'auto'    'unroll' on CPU, 'vmap' on GPU and TPU.
Both give each model the same arithmetic as its single run, up to float rounding.

Where the models live (config.seed_sharding):
  'seeds'  the seed axis is split over the devices: each device trains whole models, with no
           gradient all-reduce between devices. K must be a multiple of the device count.
  'data'   every model is replicated and its batch split over the devices, as in a single run
           (one gradient all-reduce per model and step).
  'auto'   'seeds' when K > 1 is a multiple of the device count, else 'data'.
In a multi-process run under 'seeds', each process reads the full batches of its own seeds;
under 'data', its part of every seed's batch.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from latentadv import parallel
from latentadv import validation

def choose_loop(requested: str = 'auto', backend: str | None = None) -> str:
  """'vmap' or 'unroll' (see the module docstring) on `backend` (default: JAX's default),
  for a config.seed_loop that validation.validate accepted."""
  if requested != 'auto':
    return requested
  return 'unroll' if (backend or jax.default_backend()) == 'cpu' else 'vmap'


def choose_sharding(num_seeds: int, num_devices: int, requested: str = 'auto') -> str:
  """'seeds' or 'data' (see the module docstring) for K = num_seeds models on num_devices,
  for config.num_seeds and config.seed_sharding that validation.validate accepted.

  Raises validation.ConfigError for 'seeds' with a K that the devices cannot split evenly.
  """
  if requested == 'auto':
    return 'seeds' if num_seeds > 1 and num_seeds % num_devices == 0 else 'data'
  if requested == 'seeds' and num_seeds % num_devices:
    raise validation.ConfigError(
        f"config.seed_sharding = 'seeds' cannot split config.num_seeds = {num_seeds} models "
        f'over {num_devices} devices: use a multiple of {num_devices} seeds, or '
        "config.seed_sharding='data' (or 'auto').")
  return requested

SEED_INDEX_HELP = ('In a run of K > 1 seeds (config.num_seeds), the model to use: index k in '
                   '[0, K), trained with seed config.seed + k.')


class SeedAxis:
  """The seeds of a run (config.seed + k for k < config.num_seeds) and their placement.

  For K = 1 every method is the identity of a single run (no seed axis).
  """

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    self.num_seeds = config.num_seeds
    self.seeds = [config.seed + k for k in range(self.num_seeds)]
    self.mode = choose_sharding(self.num_seeds, mesh.devices.size, config.seed_sharding)
    self.loop = choose_loop(config.seed_loop)
    self.mesh = mesh

  @property
  def stacked(self) -> bool:
    """True when the state has a leading seed axis (K > 1)."""
    return self.num_seeds > 1

  def state_sharding(self) -> NamedSharding:
    """Sharding of every state leaf: split on the seed axis under 'seeds', else replicated."""
    if self.stacked and self.mode == 'seeds':
      return NamedSharding(self.mesh, P(parallel.DATA_AXIS))
    return parallel.replicated(self.mesh)

  def batch_sharding(self) -> NamedSharding:
    """Sharding of a batch: (B, ...) split on B for one seed; (K, B, ...) split on K under
    'seeds' and on B under 'data'."""
    if self.stacked and self.mode == 'data':
      return NamedSharding(self.mesh, P(None, parallel.DATA_AXIS))
    return parallel.data_sharded(self.mesh)

  def reader_args(self) -> tuple[int | list[int], int, int]:
    """(seeds, process_index, process_count) for readers.train_batches: this process's part
    of each seed's batches, or under 'seeds' the full batches of this process's seeds."""
    index, count = jax.process_index(), jax.process_count()
    if not self.stacked:
      return self.seeds[0], index, count
    if self.mode == 'data':
      return self.seeds, index, count
    per_process = self.num_seeds // count
    return self.seeds[index * per_process:(index + 1) * per_process], 0, 1

  def stack(self, trees: Sequence):
    """One pytree from the K seeds' pytrees: leaves stacked on a new leading axis (K, ...);
    the one tree itself for K = 1."""
    if not self.stacked:
      return trees[0]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)

  def select(self, tree, k: int):
    """Seed k's pytree (leading axis removed) of a stacked pytree; `tree` itself for K = 1."""
    if not self.stacked:
      return tree
    return jax.tree.map(lambda leaf: leaf[k], tree)

  def keys(self, offset: int = 0) -> jax.Array:
    """jax.random.key(seed + offset) of every seed: shape (K,), or () for K = 1."""
    return self.stack([jax.random.key(seed + offset) for seed in self.seeds])

  def map_seeds(self, fn: Callable) -> Callable:
    """fn mapped over the leading seed axis of all its arguments and outputs, by `self.loop`
    ('vmap' or 'unroll'); fn itself for K = 1."""
    if not self.stacked:
      return fn
    if self.loop == 'vmap':
      return jax.vmap(fn)

    def unrolled(*args):
      return self.stack([fn(*self.select(args, k)) for k in range(self.num_seeds)])
    return unrolled


def seed_records(progress: dict, num_seeds: int) -> list[dict]:
  """The per-seed part of a run's checkpointed progress record: K dicts, each holding one
  seed's 'history' (and its 'collapse_monitor' record once the monitor ran). For K = 1 it is the
  progress record itself (a single run's format); for K > 1 `progress['seeds']`."""
  if num_seeds == 1:
    progress.setdefault('history', [])
    return [progress]
  return progress.setdefault('seeds', [{'history': []} for _ in range(num_seeds)])


def mean_std(values: Sequence[float]) -> dict:
  """{'mean', 'std', 'values'} of the values; std is the population standard deviation
  (ddof=0), as in the benchmark suites' tables."""
  values = [float(v) for v in values]
  return {'mean': float(np.mean(values)), 'std': float(np.std(values)), 'values': values}


def summary(seed_results: Sequence[dict]) -> dict:
  """results.json's `summary` of K seed records (each with 'clean_accuracy' and
  'robust_accuracy' of its kept state, 'final' and 'kept_state'): mean and std over seeds of
  the kept states' clean and robust accuracy (the answer), of the last and the kept state's
  clean and PGD accuracy, and how many seeds the collapse monitor saw collapse (None where it
  was off)."""
  monitored = all('collapse_monitor' in result for result in seed_results)
  collapsed = sum(result['kept_state']['collapsed'] for result in seed_results)
  return {
      'num_seeds': len(seed_results),
      **{key: mean_std([r[key] for r in seed_results])
         for key in ('clean_accuracy', 'robust_accuracy')},
      'final': {key: mean_std([r['final'][key] for r in seed_results])
                for key in ('clean_accuracy', 'pgd_accuracy')},
      'kept': {key: mean_std([r['kept_state']['final'][key] for r in seed_results])
               for key in ('clean_accuracy', 'pgd_accuracy')},
      'collapsed': collapsed if monitored else None,
      'collapsed_in': f'{collapsed} of {len(seed_results)}' if monitored else 'not monitored',
  }
