"""The input pipeline's entry points: training batches and evaluation splits of config.data.

`train_batches(config.data, ...)` and `eval_split(config.data, ...)` pick one of two readers by
config.data.pipeline; both read through the dataset's source (sources.py) and share one
interface (`Batches`: steps_per_epoch, batch(step), batches(first_step, stop_step),
first_examples(n)):
  'memory' (`MemoryBatches`): the whole split read once into uint8 arrays (`load_split`), held
    by every process; datasets of varying image size do not fit and are refused.
  'stream' (`StreamBatches`): grain, the input library the JAX documentation points to for
    multi-host training, reads each process's rows of each batch by random access from the
    source, `threads` batches at a time in parallel, `prefetch` batches ahead; records of
    varying size get a random-resized crop on the host (transforms.py).
Several seeds of one program (latentadv/seeds.py) read through `SeedStack`: each seed's reader
in its own order, the K batches stacked on a leading axis.
Global batch `step` holds the examples that `BatchPlan` assigns to it, a pure function of
(seed, step), the same for any process count; each process takes its contiguous part. So both
readers give the same batches for the same files, and the pipeline's position is the
checkpointed train step: a resumed run reads exactly the batches an uninterrupted one would. A
global index permutation replaces a shuffle buffer: with random access the full shuffle costs
nothing. Images leave the host as uint8 (or as the arrays' dtype), labels as int32.
`eval_batches` cuts an evaluation split into padded, masked batches.
"""

from collections.abc import Iterator
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from latentadv.data import datasets
from latentadv.data import sources
from latentadv.data import transforms

PIPELINES = ('memory', 'stream')
_READ_THREADS = 8  # threads reading an evaluation subset


class BatchPlan:
  """Which examples make up each training batch: a pure function of (seed, step), the same
  for any process count.

  Epoch e = step // steps_per_epoch visits the num_examples examples in the order of one
  global permutation drawn from np.random.default_rng([seed, e]); global batch `step` is the
  next `batch_size` examples of it (the last partial batch of each epoch is dropped), and
  process p of P takes the p-th of P contiguous parts of that global batch. So the global
  batch of a step is the same set and order of examples whatever P is.
  """

  def __init__(self, num_examples: int, batch_size: int, seed: int, process_index: int = 0,
               process_count: int = 1):
    if not 0 < batch_size <= num_examples:
      raise ValueError(f'batch_size {batch_size} must be in [1, {num_examples}] (the split size).')
    if batch_size % process_count:
      raise ValueError(f'batch_size {batch_size} must be divisible by the number of processes '
                       f'({process_count}).')
    if not 0 <= process_index < process_count:
      raise ValueError(f'process_index {process_index} not in [0, {process_count}).')
    self.num_examples = num_examples
    self.batch_size = batch_size
    self.seed = seed
    self.local_size = batch_size // process_count
    self.local_start = process_index * self.local_size
    self._epoch_order = (None, None)

  @property
  def steps_per_epoch(self) -> int:
    """Number of full global batches in one pass over the examples."""
    return self.num_examples // self.batch_size

  def rows(self, step: int) -> np.ndarray:
    """Indices (local_size,) of this process's examples of global batch `step`."""
    epoch, index = divmod(step, self.steps_per_epoch)
    order = self._epoch_order
    if order[0] != epoch:
      order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_examples))
      self._epoch_order = order
    start = index * self.batch_size + self.local_start
    return order[1][start:start + self.local_size]


class Batches:
  """The readers' one interface: this process's part of the global batches of a `BatchPlan`."""

  plan: BatchPlan

  @property
  def steps_per_epoch(self) -> int:
    """Number of full global batches in one pass over the split."""
    return self.plan.steps_per_epoch

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's part of global batch `step`: image (b, H, W, C), label int32 (b,);
    b = batch_size / process_count."""
    raise NotImplementedError

  def batches(self, first_step: int, stop_step: int) -> Iterator[dict[str, np.ndarray]]:
    """batch(first_step), ..., batch(stop_step - 1)."""
    return map(self.batch, range(first_step, stop_step))

  def first_examples(self, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n examples of the split: images (n, H, W, C), labels int32 (n,)."""
    raise NotImplementedError


class MemoryBatches(Batches):
  """Training batches from arrays every process holds whole, in the order of a `BatchPlan`."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    """Args: images (N, H, W, C) of any dtype (the batches keep it), labels int32 (N,)."""
    self.images = images
    self.labels = labels
    self.plan = BatchPlan(len(images), batch_size, seed, process_index, process_count)

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's part of global batch `step`: image (b, H, W, C) of the arrays' dtype,
    label int32 (b,); b = batch_size / process_count."""
    rows = self.plan.rows(step)
    return {'image': self.images[rows], 'label': self.labels[rows]}

  def first_examples(self, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n examples of the split: images (n, H, W, C), labels (n,)."""
    return self.images[:n], self.labels[:n]


class StreamBatches(Batches):
  """Training batches read from a source per batch, in the order of a `BatchPlan`."""

  def __init__(self, source: sources.Source, image_shape: tuple[int, int, int], batch_size: int,
               seed: int, process_index: int = 0, process_count: int = 1, *,
               num_examples: int = 0, variable_size: bool = False, threads: int = 8,
               prefetch: int = 4):
    """Args: image_shape (H, W, C) of the batches; num_examples: use the first n examples
    only (0 = all); variable_size: records differ in size and get a random-resized crop to
    image_shape; threads: batches read in parallel; prefetch: batches read ahead."""
    self.source = source
    self.image_shape = tuple(image_shape)
    self.seed = seed
    self.variable_size = variable_size
    self.plan = BatchPlan(num_examples or len(source), batch_size, seed, process_index,
                          process_count)
    self._read_options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's part of global batch `step`: image uint8 (b, H, W, C), label int32 (b,);
    a varying-size record k of it is random-resized-cropped, seeded by (seed, step, its
    position in the global batch)."""
    view = None
    if self.variable_size:
      def view(image, k):
        rng = np.random.default_rng([self.seed, step, self.plan.local_start + k])
        return transforms.random_resized_crop(image, self.image_shape[0], rng)
    images, labels = sources.read_rows(self.source, self.plan.rows(step), self.image_shape, view)
    return {'image': images, 'label': labels}

  def batches(self, first_step: int, stop_step: int) -> Iterator[dict[str, np.ndarray]]:
    """batch(first_step), ..., batch(stop_step - 1), read in parallel ahead of use."""
    return iter(grain.MapDataset.range(first_step, stop_step).map(self.batch)
                .to_iter_dataset(self._read_options))

  def first_examples(self, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n examples of the split, evaluation views: uint8 (n, H, W, C), labels (n,)."""
    if not n:
      return np.zeros((0, *self.image_shape), np.uint8), np.zeros(0, np.int32)
    return _eval_views(self.source, n, self.image_shape, self.variable_size)


class SeedStack(Batches):
  """The batches of K seeds' readers side by side: each key stacked on a leading seed axis."""

  def __init__(self, per_seed: Sequence[Batches]):
    """per_seed: K readers of the same split and batch size (their seeds differ)."""
    self.per_seed = list(per_seed)
    self.plan = self.per_seed[0].plan

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """Global batch `step` of every seed: image (K, b, H, W, C), label int32 (K, b)."""
    return _stack([reader.batch(step) for reader in self.per_seed])

  def batches(self, first_step: int, stop_step: int) -> Iterator[dict[str, np.ndarray]]:
    """batch(first_step), ..., batch(stop_step - 1), each seed's read as its reader reads."""
    return map(_stack, zip(*(reader.batches(first_step, stop_step)
                             for reader in self.per_seed)))

  def first_examples(self, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n examples of the split (the same for every seed): (n, H, W, C), (n,)."""
    return self.per_seed[0].first_examples(n)


def _stack(batches: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Batches with the same keys stacked on a new leading axis."""
  return {key: np.stack([batch[key] for batch in batches]) for key in batches[0]}


def _eval_views(source: sources.Source, n: int, image_shape: tuple[int, int, int],
                variable_size: bool) -> tuple[np.ndarray, np.ndarray]:
  """The first n examples of `source` (0 = all) for evaluation, read in parallel: uint8
  (n, H, W, C) (centre crops when variable_size) and int32 labels (n,)."""
  n = min(n or len(source), len(source))
  view = (lambda image, _: transforms.center_crop(image, image_shape[0])) if variable_size else None
  return sources.read_rows(source, range(n), image_shape, view, threads=_READ_THREADS)


def train_batches(data_config: Any, batch_size: int, seed: int | Sequence[int],
                  process_index: int, process_count: int) -> Batches:
  """The training batches of config.data by its pipeline: MemoryBatches over the uint8 split
  in memory, or StreamBatches over its source; the same batches for the same files.

  seed: one seed, or a sequence of K seeds: then `SeedStack`, whose batches stack the K
  seeds' batches on a leading axis (images (K, b, H, W, C), labels (K, b)).
  """
  seeds = [seed] if isinstance(seed, int) else list(seed)
  if data_config.pipeline == 'memory':
    images, labels = load_split(data_config, 'train', dtype=np.uint8)
    if data_config.num_train_examples:
      images = images[:data_config.num_train_examples]
      labels = labels[:data_config.num_train_examples]
    per_seed = [MemoryBatches(images, labels, batch_size, s, process_index, process_count)
                for s in seeds]
  else:
    info = datasets.DATASETS[data_config.name]
    source = sources.open_source(data_config, 'train')
    per_seed = [StreamBatches(source, info.image_shape, batch_size, s, process_index,
                              process_count, num_examples=data_config.num_train_examples,
                              variable_size=info.variable_size,
                              threads=data_config.stream_threads,
                              prefetch=data_config.stream_prefetch) for s in seeds]
  return per_seed[0] if isinstance(seed, int) else SeedStack(per_seed)


def eval_split(data_config: Any, split: str, n: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """The first n examples of a split (0 = all), whole in every process, by config.data.pipeline:
  uint8 (n, H, W, C) and int32 labels (n,)."""
  if data_config.pipeline == 'memory':
    images, labels = load_split(data_config, split, dtype=np.uint8)
    return images[:n or None], labels[:n or None]
  info = datasets.DATASETS[data_config.name]
  return _eval_views(sources.open_source(data_config, split), n, info.image_shape,
                     info.variable_size)


def load_split(data_config: Any, split: str, process_index: int = 0,
               process_count: int = 1, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
  """Reads this process's shard of a split into host memory (the 'memory' reader).

  Args:
    data_config: has fields name, source ('tfds' | 'local'), dir (read by 'local'; a
      directory holding the canonical files, or its parent with a `<name>/` subdirectory)
      and tfds_data_dir ('' = the tfds default).
    split: 'train' or 'test'.
    process_index: this process's index in [0, process_count).
    process_count: number of processes sharing the split.
    dtype: np.float32 (images in [0, 1]) or np.uint8 (raw [0, 255], 4x less memory).

  Returns:
    images (N, H, W, C) of `dtype` and labels int32 (N,): the process_index-th of
    process_count contiguous shards, in np.array_split order (tfds.even_splits for tfds).
  """
  name = data_config.name
  if name not in datasets.DATASETS:
    raise ValueError(f'Unknown dataset {name!r}; valid: {sorted(datasets.DATASETS)}.')
  if split not in ('train', 'test'):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count}).')
  info = datasets.DATASETS[name]
  if info.variable_size:
    raise datasets.DataError(f'{name} does not fit in host memory; set '
                             "config.data.pipeline='stream'.")
  if data_config.source == 'tfds':
    images, labels = sources.TfdsSource.read_shard(
        *datasets.tfds_names(name, split), data_config.tfds_data_dir, process_index,
        process_count)
  elif data_config.source == 'local':
    source = sources.open_source(data_config, split)
    images, labels = source.read(*_shard_bounds(len(source), process_index, process_count))
  else:
    raise ValueError(f"data source must be 'tfds' or 'local', got {data_config.source!r}.")
  if dtype == np.float32:
    images = transforms.to_unit_interval(images)
  elif dtype != np.uint8:
    raise ValueError(f'dtype must be np.float32 or np.uint8, got {dtype}.')
  return images, labels


def _shard_bounds(n: int, index: int, count: int) -> tuple[int, int]:
  """[start, stop) of shard `index` of `count` over n items, as np.array_split cuts them."""
  size, extra = divmod(n, count)
  start = index * size + min(index, extra)
  return start, start + size + (index < extra)


def eval_num_batches(total_examples: int, process_count: int, batch_size: int) -> int:
  """Batches needed for the largest process shard (np.array_split) of total_examples."""
  largest_shard = -(-total_examples // process_count)
  return -(-largest_shard // batch_size)


def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int,
                 num_batches: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Yields every example once in order, in batches of exactly batch_size.

  Each batch is dict(image (b, H, W, C), label (b,), mask bool (b,)); the last batch is
  zero-padded and its padding masked False. With num_batches (e.g. eval_num_batches(...),
  so that all processes yield the same count) fully masked batches are appended.
  """
  needed = -(-len(images) // batch_size)
  if num_batches is None:
    num_batches = needed
  if num_batches < needed:
    raise ValueError(f'num_batches {num_batches} < {needed} needed for {len(images)} examples.')
  for i in range(num_batches):
    image = images[i * batch_size:(i + 1) * batch_size]
    label = labels[i * batch_size:(i + 1) * batch_size]
    real = len(image)
    if real < batch_size:
      image = np.concatenate([image, np.zeros((batch_size - real,) + image.shape[1:], image.dtype)])
      label = np.concatenate([label, np.zeros(batch_size - real, label.dtype)])
    yield {'image': image, 'label': label, 'mask': np.arange(batch_size) < real}
