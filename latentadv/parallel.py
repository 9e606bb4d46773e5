"""Multi-process start-up, device mesh and shardings for data-parallel training.

Runs on 1 device, N devices or many hosts. Parameters and optimizer state are replicated;
batches are split along their leading axis over the mesh axis 'data'. Each host feeds only
its own slice of the global batch.
"""

import collections
from collections.abc import Iterator
import os

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = 'data'
# Placements of a run's seed axis (config.seed_sharding; latentadv/seeds.py).
SEED_SHARDINGS = ('auto', 'seeds', 'data')
SEED_LOOPS = ('auto', 'vmap', 'unroll')  # config.seed_loop

# Variables with which a SLURM step (srun) or Open MPI (mpirun) announces its process count.
_LAUNCHER_PROCESS_COUNTS = ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE')


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Starts JAX's distributed runtime if this process is one of several; True if it started.

  Call it before any JAX computation. It starts when any argument is given (JAX detects the
  ones left None on Cloud TPU, SLURM and Open MPI; e.g. on a TPU pod `num_processes` alone
  suffices), or when a SLURM step or an Open MPI job launched more than one process (JAX then
  detects all three). Otherwise the run is single-process and nothing is started.
  Cross-process collectives on CPU devices use gloo.
  """
  explicit = any(value is not None for value in (coordinator_address, num_processes, process_id))
  launched = any(int(os.environ.get(name, '1')) > 1 for name in _LAUNCHER_PROCESS_COUNTS)
  if not (explicit or launched):
    return False
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
  return True


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh, axis 'data' with GSPMD auto sharding, over `devices` (default: all devices)."""
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Sharding that keeps a full copy of an array on every device."""
  return NamedSharding(mesh, P())


def data_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Sharding that splits an array's leading (batch) axis over the mesh."""
  return NamedSharding(mesh, P(DATA_AXIS))


def global_batch(local_batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh,
                 sharding: NamedSharding | None = None) -> dict:
  """Assembles this process's per-host arrays (b, ...) into global arrays (b * processes, ...)
  split by `sharding` (default: data_sharded; see seeds.SeedAxis for a seed axis)."""
  sharding = sharding or data_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def prefetch_to_device(local_batches: Iterator[dict[str, np.ndarray]], mesh: jax.sharding.Mesh,
                       size: int = 2, sharding: NamedSharding | None = None) -> Iterator[dict]:
  """global_batch of each of local_batches (split by `sharding`, default data_sharded),
  transferred `size` batches ahead of their use, so that the next batch's host-to-device copy
  overlaps the current step."""
  in_flight = collections.deque()
  for local_batch in local_batches:
    in_flight.append(global_batch(local_batch, mesh, sharding))
    if len(in_flight) >= size:
      yield in_flight.popleft()
  yield from in_flight


def shard_batch(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict:
  """Global arrays (B, ...) split over the mesh from host arrays every process holds whole."""
  sharding = data_sharded(mesh)
  return {k: jax.make_array_from_callback(v.shape, sharding, lambda index, v=v: v[index])
          for k, v in batch.items()}


def check_batch_size(global_size: int, name: str, mesh: jax.sharding.Mesh) -> int:
  """Returns the per-process batch size; raises if `global_size` can't be split evenly."""
  devices, processes = mesh.devices.size, jax.process_count()
  if global_size % devices:
    raise ValueError(f'{name} = {global_size} must be divisible by the number of devices '
                     f'({devices}); choose a multiple of {devices}.')
  return global_size // processes
