"""Streaming input pipeline for datasets larger than host memory (config.data.pipeline='stream').

Grain, the input library the JAX documentation points to for multi-host training, reads the
training split by random access from a `Source`: global batch `step` holds the examples that
`data.BatchPlan` assigns to it (the in-memory path's pure function of (seed, step), the same
for any process count), and each process reads, decodes and preprocesses only its own part of
each batch, `threads` batches at a time in parallel, `prefetch` batches ahead. Because a batch
is a function of its step, the pipeline's position is the checkpointed train step: a resumed run
reads exactly the batches an uninterrupted one would. A global index permutation replaces a
shuffle buffer: with random access the full shuffle costs nothing.

Sources: CIFAR-10's binary files (memory-mapped, one record read per example), MNIST-style
gzipped idx files (gzip is not seekable: the decompressed split, 47 MB, is held in memory),
image folders (latentadv/image_folders.py) and tfds datasets prepared in the ArrayRecord
format (`tfds.data_source`). Images leave the host as uint8; datasets of varying image size
(ImageNet) are resized on the host: a random-resized crop for training, a resize to
256/224 of the size and a centre crop for evaluation; flips stay on the device.
"""

from collections.abc import Iterator, Sequence
import concurrent.futures
import os
from typing import Any, Protocol

import grain
import numpy as np
from PIL import Image

from latentadv import data
from latentadv import image_folders

PIPELINES = ('memory', 'stream')
_TFDS_SPLITS = {('imagenet2012', 'test'): 'validation'}
_EVAL_RESIZE = 256 / 224  # resize the shorter side to size * this, then centre-crop `size`


class Source(Protocol):
  """Random access to one split: source[i] -> (uint8 image (H, W, C), int label)."""

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]: ...


class ArraySource:
  """A split held in memory: images uint8 (N, H, W, C), labels (N,)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self.images, self.labels = images, labels

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    return self.images[index], int(self.labels[index])


class CifarBinarySource:
  """CIFAR-10 binary batches, memory-mapped: reading record i touches its 3,073 bytes only."""

  def __init__(self, paths: Sequence[str]):
    record_size = 1 + 3 * 32 * 32
    self._files = []
    for path in paths:
      expected = data.CIFAR_RECORDS_PER_FILE * record_size
      if os.path.getsize(path) != expected:
        raise data.local_error('cifar10', os.path.dirname(path),
                               f'{os.path.basename(path)} has {os.path.getsize(path)} bytes, '
                               f'expected {expected} (truncated or corrupt)')
      self._files.append(np.memmap(path, np.uint8, 'r', shape=(data.CIFAR_RECORDS_PER_FILE, record_size)))

  def __len__(self) -> int:
    return len(self._files) * data.CIFAR_RECORDS_PER_FILE

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    file, row = divmod(index, data.CIFAR_RECORDS_PER_FILE)
    record = np.asarray(self._files[file][row])
    return record[1:].reshape(3, 32, 32).transpose(1, 2, 0), int(record[0])


class TfdsSource:
  """A tfds dataset prepared in the ArrayRecord format, read with tfds.data_source.

  Reading needs no TensorFlow; preparing the dataset (the first use) does.
  """

  def __init__(self, name: str, split: str, data_dir: str):
    tfds = data.import_tfds(needs_tensorflow=False)
    builder = tfds.builder(name, data_dir=data_dir or None)
    if not builder.is_prepared():
      data.import_tfds(needs_tensorflow=True)  # a DataError if TensorFlow is missing
    self._source = tfds.data_source(name, split=split, data_dir=data_dir or None)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    example = self._source[index]
    return np.asarray(example['image']), int(example['label'])


def open_source(data_config: Any, split: str) -> Source:
  """The random-access source of `split` ('train' | 'test') of config.data's dataset."""
  name = data_config.name
  if data_config.source == 'tfds':
    tfds_split = _TFDS_SPLITS.get((name, split), split)
    return TfdsSource(data.tfds_name(name), tfds_split, data_config.tfds_data_dir)
  if name in image_folders.FOLDER_NAMES:
    return image_folders.open_folder(name, data_config.dir, split)
  if name == 'cifar10':
    return CifarBinarySource(data.local_paths(name, data_config.dir, split))
  return ArraySource(*data.load_split(data_config, split, dtype=np.uint8))


def random_resized_crop(image: np.ndarray, size: int, rng: np.random.Generator,
                        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
  """Inception-style crop of uint8 (H, W, C): a window of area fraction ~U(scale) and aspect
  ratio ~logU(ratio) at a uniform position (10 tries, else the centred largest window of
  aspect in `ratio`), resized bilinearly to uint8 (size, size, C)."""
  height, width = image.shape[:2]
  area = height * width
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    w, h = round(np.sqrt(target * aspect)), round(np.sqrt(target / aspect))
    if 0 < w <= width and 0 < h <= height:
      top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
      return _resize(image[top:top + h, left:left + w], (size, size))
  aspect = np.clip(width / height, *ratio)
  w, h = (width, round(width / aspect)) if width / height <= aspect else (round(height * aspect),
                                                                           height)
  top, left = (height - h) // 2, (width - w) // 2
  return _resize(image[top:top + h, left:left + w], (size, size))


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """Evaluation view of uint8 (H, W, C): shorter side resized to size * 256/224, then the
  central (size, size, C) window."""
  height, width = image.shape[:2]
  short = round(size * _EVAL_RESIZE)
  scale = short / min(height, width)
  resized = _resize(image, (max(short, round(height * scale)), max(short, round(width * scale))))
  top, left = (resized.shape[0] - size) // 2, (resized.shape[1] - size) // 2
  return resized[top:top + size, left:left + size]


def _resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """Bilinear resize of uint8 (H, W, C) to (shape[0], shape[1], C)."""
  if image.shape[:2] == shape:
    return image
  squeeze = image.shape[2] == 1
  resized = Image.fromarray(image[..., 0] if squeeze else image).resize(
      (shape[1], shape[0]), Image.BILINEAR)
  resized = np.asarray(resized)
  return resized[..., None] if squeeze else resized


class StreamBatches:
  """Training batches read from a Source in the order of a data.BatchPlan."""

  def __init__(self, source: Source, image_shape: tuple[int, int, int], batch_size: int,
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
    self.plan = data.BatchPlan(num_examples or len(source), batch_size, seed, process_index,
                               process_count)
    self._read_options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)

  @property
  def steps_per_epoch(self) -> int:
    """Number of full global batches in one pass over the split."""
    return self.plan.steps_per_epoch

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's part of global batch `step`: image uint8 (b, H, W, C), label int32 (b,)."""
    images = np.empty((self.plan.local_size, *self.image_shape), np.uint8)
    labels = np.empty(self.plan.local_size, np.int32)
    for k, row in enumerate(self.plan.rows(step)):
      image, labels[k] = self.source[int(row)]
      if self.variable_size:
        rng = np.random.default_rng([self.seed, step, self.plan.local_start + k])
        image = random_resized_crop(image, self.image_shape[0], rng)
      images[k] = _checked(image, self.image_shape, row)
    return {'image': images, 'label': labels}

  def batches(self, first_step: int, stop_step: int) -> Iterator[dict[str, np.ndarray]]:
    """batch(first_step), ..., batch(stop_step - 1), read in parallel ahead of use."""
    return iter(grain.MapDataset.range(first_step, stop_step).map(self.batch)
                .to_iter_dataset(self._read_options))

  def first_examples(self, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n examples of the split, evaluation views: uint8 (n, H, W, C), labels (n,)."""
    if not n:
      return np.zeros((0, *self.image_shape), np.uint8), np.zeros(0, np.int32)
    return read_examples(self.source, n, self.image_shape, self.variable_size)


def read_examples(source: Source, n: int, image_shape: tuple[int, int, int],
                  variable_size: bool = False, threads: int = 8
                  ) -> tuple[np.ndarray, np.ndarray]:
  """The first n examples of `source` (0 = all) for evaluation: uint8 (n, H, W, C) (centre
  crops when variable_size) and int32 labels (n,)."""
  n = min(n or len(source), len(source))

  def read(index):
    image, label = source[index]
    return _checked(center_crop(image, image_shape[0]) if variable_size else image,
                    image_shape, index), label

  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    examples = list(pool.map(read, range(n)))
  return (np.stack([image for image, _ in examples]),
          np.array([label for _, label in examples], np.int32))


def _checked(image: np.ndarray, shape: tuple[int, int, int], index) -> np.ndarray:
  """image, or DataError naming record `index` if its shape is not `shape`."""
  if image.shape != shape:
    raise data.DataError(f'Record {index} has shape {image.shape}, expected {shape}; the '
                         'dataset files do not match config.data.name.')
  return image


def load_eval_split(data_config: Any, split: str, n: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """The first n examples of a split (0 = all), whole in every process, by config.data.pipeline:
  uint8 (n, H, W, C) and int32 labels (n,)."""
  if data_config.pipeline == 'memory':
    images, labels = data.load_split(data_config, split, dtype=np.uint8)
    return images[:n or None], labels[:n or None]
  info = data.DATASETS[data_config.name]
  return read_examples(open_source(data_config, split), n, info.image_shape, info.variable_size)


def train_batches(data_config: Any, batch_size: int, seed: int, process_index: int,
                  process_count: int):
  """The training stream of config.data: data.TrainStream over the uint8 split in memory, or
  StreamBatches over its source. Both have steps_per_epoch, batch(step) and
  batches(first_step, stop_step), and give the same batches for the same files."""
  if data_config.pipeline == 'memory':
    images, labels = data.load_split(data_config, 'train', dtype=np.uint8)
    if data_config.num_train_examples:
      images = images[:data_config.num_train_examples]
      labels = labels[:data_config.num_train_examples]
    return data.TrainStream(images, labels, batch_size, seed, process_index, process_count)
  info = data.DATASETS[data_config.name]
  return StreamBatches(open_source(data_config, 'train'), info.image_shape, batch_size, seed,
                       process_index, process_count,
                       num_examples=data_config.num_train_examples,
                       variable_size=info.variable_size, threads=data_config.stream_threads,
                       prefetch=data_config.stream_prefetch)
