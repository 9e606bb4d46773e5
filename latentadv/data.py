"""In-memory input pipeline: tfds or canonical local files, training batches, augmentation.

Images are NHWC, uint8 in [0, 255] or float32 in [0, 1] (`to_unit_interval` converts, on the
host or on the device); labels are int32. `load_split` can return one process's contiguous
shard of a split (`np.array_split` order); the trainer loads the whole training split as uint8
in every process and `TrainStream` hands each process its part of every global batch. Datasets
larger than host memory take the streaming path instead (latentadv/stream.py).
"""

from collections.abc import Iterator
import dataclasses
import gzip
import importlib.util
import os
from typing import Any
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from latentadv import image_folders
from latentadv.image_folders import DataError  # pylint: disable=unused-import (re-exported)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static facts about a dataset; mean/std are per channel, in [0, 1] pixel units."""
  num_classes: int
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  train_size: int
  test_size: int
  tfds_name: str
  # Records of varying size, resized on the host to image_shape (the streaming path only).
  variable_size: bool = False


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DATASETS = {
    'mnist': DatasetInfo(10, (28, 28, 1), (0.1307,), (0.3081,), 60000, 10000, 'mnist'),
    'fashion_mnist': DatasetInfo(
        10, (28, 28, 1), (0.2860,), (0.3530,), 60000, 10000, 'fashion_mnist'),
    'cifar10': DatasetInfo(
        10, (32, 32, 3), (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616), 50000, 10000,
        'cifar10'),
    'cifar100': DatasetInfo(
        100, (32, 32, 3), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 50000, 10000,
        'cifar100'),
    'svhn': DatasetInfo(
        10, (32, 32, 3), (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), 73257, 26032,
        'svhn_cropped'),
    # Tiny-ImageNet has no tfds builder: local `tiny-imagenet-200/` folders only
    # (latentadv/image_folders.py); its 'test' split is the labelled validation set. Its
    # normalisation is ImageNet's, as in the SLAT code's Tiny-ImageNet config.
    'tiny_imagenet': DatasetInfo(
        200, (64, 64, 3), IMAGENET_MEAN, IMAGENET_STD, 100000, 10000, ''),
    'imagenet2012': DatasetInfo(
        1000, (224, 224, 3), IMAGENET_MEAN, IMAGENET_STD, 1281167, 50000, 'imagenet2012',
        variable_size=True),
}

_IDX_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
_LOCAL_FILES = {
    'mnist': _IDX_FILES,
    'fashion_mnist': _IDX_FILES,
    'cifar10': {
        'train': tuple(f'data_batch_{i}.bin' for i in range(1, 6)),
        'test': ('test_batch.bin',),
    },
}
_DOWNLOADS = {
    'mnist': 'https://storage.googleapis.com/cvdf-datasets/mnist/',
    'fashion_mnist': 'data/fashion/ of https://github.com/zalandoresearch/fashion-mnist',
    'cifar10': ('the cifar-10-batches-bin/ folder of '
                'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz'),
}
_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049
CIFAR_RECORDS_PER_FILE = 10000


class _BadFile(Exception):
  """A local file is unreadable; the message says what is wrong with it."""


def to_unit_interval(images):
  """uint8 images in [0, 255] as float32 in [0, 1] (numpy or jax arrays); floats unchanged."""
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 255
  return images


def load_split(data_config: Any, split: str, process_index: int = 0,
               process_count: int = 1, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
  """Loads this process's shard of a split into host memory.

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
    process_count contiguous shards, in np.array_split order.
  """
  if data_config.name not in DATASETS:
    raise ValueError(f'Unknown dataset {data_config.name!r}; valid: {sorted(DATASETS)}.')
  if split not in ('train', 'test'):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count}).')
  if DATASETS[data_config.name].variable_size:
    raise DataError(f'{data_config.name} does not fit in host memory; set '
                    "config.data.pipeline='stream'.")
  if data_config.source == 'tfds':
    images, labels = _load_tfds(data_config, split, process_index, process_count)
  elif data_config.source == 'local':
    images, labels = _load_local(data_config.name, data_config.dir, split)
    start, stop = _shard_bounds(len(labels), process_index, process_count)
    images, labels = images[start:stop], labels[start:stop]
  else:
    raise ValueError(f"data source must be 'tfds' or 'local', got {data_config.source!r}.")
  if dtype == np.float32:
    images = to_unit_interval(images)
  elif dtype != np.uint8:
    raise ValueError(f'dtype must be np.float32 or np.uint8, got {dtype}.')
  return images, labels.astype(np.int32)


def _shard_bounds(n: int, index: int, count: int) -> tuple[int, int]:
  """[start, stop) of shard `index` of `count` over n items, as np.array_split cuts them."""
  size, extra = divmod(n, count)
  start = index * size + min(index, extra)
  return start, start + size + (index < extra)


def tfds_name(name: str) -> str:
  """The tfds builder name of dataset `name`; DataError if tfds has none."""
  if not DATASETS[name].tfds_name:
    raise DataError(f'{name} has no tfds builder. Set config.data.source=\'local\' and '
                    f'config.data.dir to its {image_folders.FOLDER_NAMES[name]}/ folder.')
  return DATASETS[name].tfds_name


def import_tfds(needs_tensorflow: bool):
  """Returns the tensorflow_datasets module, imported only when a tfds dataset is used.

  TensorFlow is needed only to prepare a tfds dataset or to read it whole with `tfds.load`
  (`needs_tensorflow`); reading a prepared ArrayRecord dataset with `tfds.data_source` is not.
  A missing package is a DataError that says what to install or how to do without it.
  """
  missing = [package for package, module in (('tensorflow-datasets', 'tensorflow_datasets'),
                                             ('tensorflow-cpu', 'tensorflow'))
             if (module == 'tensorflow_datasets' or needs_tensorflow)
             and importlib.util.find_spec(module) is None]
  if missing:
    raise DataError(
        f'config.data.source=\'tfds\' needs {" and ".join(missing)}, which is not installed. '
        f'Fix: pip install {" ".join(missing)} (\'tensorflow\' off x86-64), or read the '
        'canonical files with config.data.source=\'local\' and config.data.dir (README, Data).')
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


def _load_tfds(data_config, split, process_index, process_count):
  """Reads this process's even split with tfds: uint8 (N, H, W, C), integer labels (N,)."""
  tfds = import_tfds(needs_tensorflow=True)
  return tfds.as_numpy(tfds.load(
      tfds_name(data_config.name),
      split=tfds.even_splits(split, process_count)[process_index],
      batch_size=-1,
      as_supervised=True,
      data_dir=data_config.tfds_data_dir or None))


def _load_local(name: str, root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads a whole split from canonical local files: uint8 (N, H, W, C), uint8 labels (N,)."""
  if name in image_folders.FOLDER_NAMES:
    return _read_folder(name, root, split)
  paths = local_paths(name, root, split)
  info = DATASETS[name]
  count = info.train_size if split == 'train' else info.test_size
  try:
    if name == 'cifar10':
      return _read_cifar10(paths, info.num_classes)
    return _read_idx_pair(*paths, count, info.image_shape, info.num_classes)
  except _BadFile as e:
    raise local_error(name, os.path.dirname(paths[0]), str(e)) from None


def local_paths(name: str, root: str, split: str) -> list[str]:
  """Paths of the canonical files of a split of `name` in `root` (or `root/<name>/`);
  DataError saying how to fix it when the directory or a file is missing."""
  if name not in _LOCAL_FILES:
    raise DataError(
        f'Dataset {name!r} has no local-files reader (local files are supported for '
        f"{', '.join([*_LOCAL_FILES, *image_folders.FOLDER_NAMES])}). Set "
        "config.data.source='tfds' to load it with TensorFlow Datasets.")
  if not root:
    raise local_error(name, root, 'config.data.dir is empty')
  directory = os.path.join(root, name) if os.path.isdir(os.path.join(root, name)) else root
  if not os.path.isdir(directory):
    raise local_error(name, directory, 'the directory does not exist')
  paths = [os.path.join(directory, f) for f in _LOCAL_FILES[name][split]]
  missing = [os.path.basename(p) for p in paths if not os.path.isfile(p)]
  if missing:
    raise local_error(name, directory, f"missing {', '.join(missing)}")
  return paths


def _read_folder(name: str, root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Decodes every image of a folder dataset's split: uint8 (N, H, W, C), labels (N,)."""
  source = image_folders.open_folder(name, root, split)
  shape = DATASETS[name].image_shape
  images = np.empty((len(source), *shape), np.uint8)
  for i, path in enumerate(source.paths):
    image = image_folders.read_rgb(path)
    if image.shape != shape:
      raise DataError(f'{path!r} has shape {image.shape}, expected {shape} for {name}.')
    images[i] = image
  return images, source.labels


def local_error(name: str, directory: str, problem: str) -> DataError:
  """One message naming the directory, the problem, the expected files and the fixes."""
  expected = [f for split in ('train', 'test') for f in _LOCAL_FILES[name][split]]
  return DataError(
      f'Cannot read local {name} data in {directory!r}: {problem}. Expected the canonical '
      f"files {', '.join(expected)} (from {_DOWNLOADS[name]}). Fix: point config.data.dir "
      f"at a directory holding these files (or at its parent with a '{name}/' "
      "subdirectory), or set config.data.source='tfds' to download the dataset online.")


def _read_idx_pair(images_path, labels_path, count, image_shape, num_classes):
  """Reads gzipped idx images and labels: uint8 (count, H, W, C) and uint8 (count,)."""
  height, width, channels = image_shape
  images = _read_idx(images_path, _IDX_IMAGES_MAGIC, (count, height, width))
  labels = _read_idx(labels_path, _IDX_LABELS_MAGIC, (count,))
  if labels.max() >= num_classes:
    raise _BadFile(f'{os.path.basename(labels_path)} has labels >= {num_classes}')
  return images.reshape(count, height, width, channels), labels


def _read_idx(path: str, magic: int, shape: tuple[int, ...]) -> np.ndarray:
  """Reads a gzipped idx file of unsigned bytes, checking its magic number and `shape`."""
  file_name = os.path.basename(path)
  try:
    with gzip.open(path, 'rb') as f:
      data = f.read()
  except (OSError, EOFError, zlib.error) as e:
    raise _BadFile(f'{file_name} is not a complete gzip file ({e})') from None
  header_size = 4 + 4 * len(shape)
  if len(data) < header_size:
    raise _BadFile(f'{file_name} is truncated ({len(data)} bytes after decompression)')
  header = np.frombuffer(data, '>u4', count=1 + len(shape))
  if header[0] != magic:
    raise _BadFile(f'{file_name} has magic number {header[0]}, expected {magic}')
  dims = tuple(int(d) for d in header[1:])
  if dims != shape:
    raise _BadFile(f'{file_name} has dimensions {dims}, expected {shape}')
  if len(data) != header_size + np.prod(shape):
    raise _BadFile(f'{file_name} has {len(data) - header_size} data bytes, expected '
                   f'{np.prod(shape)} (truncated or corrupt)')
  return np.frombuffer(data, np.uint8, offset=header_size).reshape(shape)


def _read_cifar10(paths: list[str], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """Reads CIFAR-10 binary batches: uint8 images (N, 32, 32, 3) and uint8 labels (N,).

  Each record is 1 label byte then 3072 pixel bytes: the R, G and B planes, each 32x32
  row-major.
  """
  record_size = 1 + 3 * 32 * 32
  records = []
  for path in paths:
    with open(path, 'rb') as f:
      data = f.read()
    if len(data) != CIFAR_RECORDS_PER_FILE * record_size:
      raise _BadFile(f'{os.path.basename(path)} has {len(data)} bytes, expected '
                     f'{CIFAR_RECORDS_PER_FILE * record_size} (truncated or corrupt)')
    records.append(np.frombuffer(data, np.uint8).reshape(-1, record_size))
  records = np.concatenate(records)
  labels = records[:, 0]
  if labels.max() >= num_classes:
    raise _BadFile(f'a record has label {labels.max()} >= {num_classes} (corrupt file)')
  images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels


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


class TrainStream:
  """Training batches from arrays every process holds whole, in the order of a `BatchPlan`."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    self.images = images
    self.labels = labels
    self.plan = BatchPlan(len(images), batch_size, seed, process_index, process_count)

  @property
  def steps_per_epoch(self) -> int:
    """Number of full global batches in one pass over the split."""
    return self.plan.steps_per_epoch

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's part of global batch `step`: image (b, H, W, C) of the arrays' dtype,
    label int32 (b,); b = batch_size / process_count."""
    rows = self.plan.rows(step)
    return {'image': self.images[rows], 'label': self.labels[rows]}

  def batches(self, first_step: int, stop_step: int) -> Iterator[dict[str, np.ndarray]]:
    """batch(first_step), ..., batch(stop_step - 1)."""
    return map(self.batch, range(first_step, stop_step))

  def first_examples(self, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n examples of the split: images (n, H, W, C), labels (n,)."""
    return self.images[:n], self.labels[:n]


def augment(rng: jax.Array, images: jax.Array, crop_padding: int, flip: bool) -> jax.Array:
  """Randomly crops and flips each image of (B, H, W, C) independently; same shape out.

  Crop: zero-pad by crop_padding on each spatial side and cut an (H, W) window at a
  uniform offset (crop_padding = 0: no crop). Flip: mirror left-right with probability 1/2.
  Deterministic given rng; crop_padding and flip must be static under jax.jit.
  """
  batch, height, width, channels = images.shape
  crop_rng, flip_rng = jax.random.split(rng)
  if crop_padding:
    pad = crop_padding
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(crop_rng, (batch, 2), 0, 2 * pad + 1)
    images = jax.vmap(lambda image, offset: jax.lax.dynamic_slice(
        image, (offset[0], offset[1], 0), (height, width, channels)))(padded, offsets)
  if flip:
    mirrored = jax.random.bernoulli(flip_rng, 0.5, (batch, 1, 1, 1))
    images = jnp.where(mirrored, images[:, :, ::-1, :], images)
  return images


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
