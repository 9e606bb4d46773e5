"""One random-access source per file format: the only code that reads dataset files.

A source is one split: len(source) examples, source[i] -> (uint8 image (H, W, C), int label).
  CifarBinarySource: CIFAR-10's binary batches, memory-mapped: record i touches its 3,073
    bytes only.
  IdxSource: MNIST-style gzipped idx files. gzip is not seekable, so the source holds the
    decompressed split (MNIST: 47 MB).
  FolderSource: folders of image files (the Tiny-ImageNet and ImageNet layouts of
    datasets.py), decoded with Pillow.
  TfdsSource: a tfds dataset prepared in the ArrayRecord format, read with `tfds.data_source`
    (no TensorFlow needed); `TfdsSource.read_shard` reads a process's shard whole with
    `tfds.load` instead (TensorFlow; any prepared file format).
`open_source` opens the source of config.data's dataset and `read_rows` reads any rows of any
source into uint8 arrays (the streaming pipeline's batches and evaluation subsets). The local
sources also read a contiguous range at once, `read(start, stop)`, for the in-memory pipeline's
whole split: vectorised for CIFAR-10 and idx files (a row at a time is measurably slower there),
row by row in parallel for folders.
Every missing, malformed or damaged file is a datasets.DataError that says how to fix it.
tensorflow_datasets is imported only when a tfds dataset is used (`import_tfds`).
"""

from collections.abc import Callable, Sequence
import concurrent.futures
import gzip
import importlib.util
import os
from typing import Any, Protocol
import zlib

import numpy as np
from PIL import Image

from latentadv.data import datasets

_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049
_CIFAR_RECORDS_PER_FILE = 10000
_CIFAR_RECORD_SIZE = 1 + 3 * 32 * 32
_CIFAR_CLASSES = 10
_IMAGE_EXTENSIONS = ('.jpeg', '.jpg', '.png')


class Source(Protocol):
  """Random access to one split: source[i] -> (uint8 image (H, W, C), int label)."""

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]: ...


def open_source(data_config: Any, split: str) -> Source:
  """The source of `split` ('train' | 'test') of config.data's dataset (data_config.name): its
  tfds dataset prepared in data_config.tfds_data_dir ('' = the tfds default) if
  data_config.source is 'tfds', its canonical files or folder under data_config.dir if 'local'."""
  name = data_config.name
  if data_config.source == 'tfds':
    return TfdsSource(*datasets.tfds_names(name, split), data_config.tfds_data_dir)
  if name in datasets.FOLDER_NAMES:
    return open_folder(name, data_config.dir, split)
  paths = datasets.local_paths(name, data_config.dir, split)
  if name == 'cifar10':
    return CifarBinarySource(paths)
  return IdxSource(name, split, *paths)


def read_rows(source: Source, rows: Sequence[int], image_shape: tuple[int, int, int],
              view: Callable[[np.ndarray, int], np.ndarray] | None = None,
              threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """Examples rows[0], rows[1], ... of `source`: uint8 (len(rows), *image_shape), int32
  (len(rows),). view(image, k), e.g. a crop, maps the k-th image before its shape is checked
  (DataError naming the record if it is not image_shape); threads > 1 reads `threads`
  contiguous parts of rows in parallel."""
  images = np.empty((len(rows), *image_shape), np.uint8)
  labels = np.empty(len(rows), np.int32)

  def read(part):
    for k in part:
      image, labels[k] = source[int(rows[k])]
      if view is not None:
        image = view(image, k)
      if image.shape != image_shape:
        raise datasets.DataError(f'Record {rows[k]} has shape {image.shape}, expected '
                                 f'{image_shape}; the dataset files do not match '
                                 'config.data.name.')
      images[k] = image

  if threads > 1:
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
      list(pool.map(read, np.array_split(np.arange(len(rows)), threads)))
  else:
    read(range(len(rows)))
  return images, labels


class IdxSource:
  """A split of MNIST-style gzipped idx files (images, labels), decompressed into memory:
  gzip is not seekable."""

  def __init__(self, name: str, split: str, images_path: str, labels_path: str):
    info = datasets.DATASETS[name]
    count = info.train_size if split == 'train' else info.test_size
    height, width, channels = info.image_shape
    images = _read_idx(name, images_path, _IDX_IMAGES_MAGIC, (count, height, width))
    labels = _read_idx(name, labels_path, _IDX_LABELS_MAGIC, (count,))
    if labels.max() >= info.num_classes:
      raise _file_error(name, labels_path, f'has labels >= {info.num_classes}')
    self._images = images.reshape(count, height, width, channels)
    self._labels = labels

  def __len__(self) -> int:
    return len(self._labels)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    return self._images[index], int(self._labels[index])

  def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Examples start, ..., stop - 1: uint8 (n, H, W, C), int32 (n,)."""
    return self._images[start:stop], self._labels[start:stop].astype(np.int32)


def _read_idx(name: str, path: str, magic: int, shape: tuple[int, ...]) -> np.ndarray:
  """Reads a gzipped idx file of unsigned bytes, checking its magic number and `shape`."""
  try:
    with gzip.open(path, 'rb') as f:
      data = f.read()
  except (OSError, EOFError, zlib.error) as e:
    raise _file_error(name, path, f'is not a complete gzip file ({e})') from None
  header_size = 4 + 4 * len(shape)
  if len(data) < header_size:
    raise _file_error(name, path, f'is truncated ({len(data)} bytes after decompression)')
  header = np.frombuffer(data, '>u4', count=1 + len(shape))
  if header[0] != magic:
    raise _file_error(name, path, f'has magic number {header[0]}, expected {magic}')
  dims = tuple(int(d) for d in header[1:])
  if dims != shape:
    raise _file_error(name, path, f'has dimensions {dims}, expected {shape}')
  if len(data) != header_size + np.prod(shape):
    raise _file_error(name, path, f'has {len(data) - header_size} data bytes, expected '
                      f'{np.prod(shape)} (truncated or corrupt)')
  return np.frombuffer(data, np.uint8, offset=header_size).reshape(shape)


def _file_error(name: str, path: str, problem: str) -> datasets.DataError:
  """datasets.files_error for a problem with the file at `path` (its name starts `problem`)."""
  return datasets.files_error(name, os.path.dirname(path),
                              f'{os.path.basename(path)} {problem}')


class CifarBinarySource:
  """CIFAR-10 binary batches, memory-mapped: reading record i touches its 3,073 bytes only.

  Each record is 1 label byte then 3072 pixel bytes: the R, G and B planes, each 32x32
  row-major.
  """

  def __init__(self, paths: Sequence[str]):
    self._files = []
    for path in paths:
      expected = _CIFAR_RECORDS_PER_FILE * _CIFAR_RECORD_SIZE
      if os.path.getsize(path) != expected:
        raise _file_error('cifar10', path, f'has {os.path.getsize(path)} bytes, expected '
                          f'{expected} (truncated or corrupt)')
      self._files.append(np.memmap(path, np.uint8, 'r',
                                   shape=(_CIFAR_RECORDS_PER_FILE, _CIFAR_RECORD_SIZE)))
    self._paths = paths

  def __len__(self) -> int:
    return len(self._files) * _CIFAR_RECORDS_PER_FILE

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    file, row = divmod(index, _CIFAR_RECORDS_PER_FILE)
    record = np.asarray(self._files[file][row])
    if record[0] >= _CIFAR_CLASSES:
      raise _file_error('cifar10', self._paths[file], f'has a record with label {record[0]} >= '
                        f'{_CIFAR_CLASSES} (corrupt file)')
    return record[1:].reshape(3, 32, 32).transpose(1, 2, 0), int(record[0])

  def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Examples start, ..., stop - 1, each file's part at once (vectorised: reading the records
    one at a time makes the in-memory pipeline's read slower): uint8 (n, 32, 32, 3), int32
    (n,)."""
    images = np.empty((stop - start, 32, 32, 3), np.uint8)
    labels = np.empty(stop - start, np.int32)
    for file, (path, records) in enumerate(zip(self._paths, self._files)):
      first = file * _CIFAR_RECORDS_PER_FILE
      low, high = max(start, first), min(stop, first + _CIFAR_RECORDS_PER_FILE)
      if low < high:
        part = records[low - first:high - first]
        if part[:, 0].max() >= _CIFAR_CLASSES:
          raise _file_error('cifar10', path, f'has a record with label {part[:, 0].max()} >= '
                            f'{_CIFAR_CLASSES} (corrupt file)')
        images[low - start:high - start] = part[:, 1:].reshape(-1, 3, 32, 32).transpose(
            0, 2, 3, 1)
        labels[low - start:high - start] = part[:, 0]
    return images, labels


class FolderSource:
  """The images of one split of a folder dataset, decoded on access: uint8 (H, W, 3)."""

  def __init__(self, paths: list[str], labels: np.ndarray, image_shape: tuple[int, int, int]):
    """Args: paths and int32 labels (N,) of the images; image_shape: the dataset's."""
    self.paths = paths
    self.labels = labels
    self.image_shape = image_shape

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    return read_rgb(self.paths[index]), int(self.labels[index])

  def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Examples start, ..., stop - 1, decoded in parallel threads: uint8 (n, *image_shape),
    int32 (n,); DataError if an image has another shape."""
    return read_rows(self, range(start, stop), self.image_shape, threads=8)


def read_rgb(path: str) -> np.ndarray:
  """Decodes an image file as uint8 RGB (H, W, 3) (grayscale and CMYK files converted)."""
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert('RGB'))
  except (OSError, SyntaxError, ValueError) as e:
    raise datasets.DataError(f'Cannot decode the image {path!r} ({e}); the file is damaged or '
                             'is not an image. Replace it from the original archive.') from None


def open_folder(name: str, root: str, split: str) -> FolderSource:
  """The split ('train' or 'test') of folder dataset `name` under `root`; raises DataError
  with the expected layout when files or folders are missing."""
  if name not in datasets.FOLDER_NAMES:
    raise ValueError(f'{name!r} has no folder layout; valid: {sorted(datasets.FOLDER_NAMES)}.')
  directory = datasets.dataset_dir(name, root)
  list_split = _tiny_imagenet_split if name == 'tiny_imagenet' else _imagenet_split
  paths, labels = list_split(directory, split)
  if not paths:
    raise datasets.files_error(name, directory, f'no images for the {split!r} split')
  return FolderSource(paths, np.asarray(labels, np.int32), datasets.DATASETS[name].image_shape)


def _tiny_imagenet_split(directory: str, split: str) -> tuple[list[str], list[int]]:
  """Paths and labels of Tiny-ImageNet's train split, or of its validation set for 'test'."""
  wnids_path = os.path.join(directory, 'wnids.txt')
  if not os.path.isfile(wnids_path):
    raise datasets.files_error('tiny_imagenet', directory, 'missing wnids.txt')
  with open(wnids_path) as f:
    wnids = sorted(line.strip() for line in f if line.strip())
  label_of = {wnid: label for label, wnid in enumerate(wnids)}
  if split == 'train':
    paths, labels = [], []
    for wnid in wnids:
      folder = os.path.join(directory, 'train', wnid, 'images')
      if not os.path.isdir(folder):
        raise datasets.files_error('tiny_imagenet', directory,
                                   f'missing the folder train/{wnid}/images')
      files = _image_files(folder)
      paths += [os.path.join(folder, f) for f in files]
      labels += [label_of[wnid]] * len(files)
    return paths, labels
  annotations = os.path.join(directory, 'val', 'val_annotations.txt')
  if not os.path.isfile(annotations):
    raise datasets.files_error('tiny_imagenet', directory, 'missing val/val_annotations.txt')
  paths, labels = [], []
  with open(annotations) as f:
    for line in f:
      fields = line.split('\t')
      if len(fields) < 2 or fields[1] not in label_of:
        raise datasets.files_error('tiny_imagenet', directory,
                                   f'val/val_annotations.txt has a malformed line {line.strip()!r}')
      paths.append(os.path.join(directory, 'val', 'images', fields[0]))
      labels.append(label_of[fields[1]])
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise datasets.files_error(
        'tiny_imagenet', directory, f'{len(missing)} validation images listed in '
        f'val/val_annotations.txt are missing, e.g. {os.path.relpath(missing[0], directory)}')
  return paths, labels


def _imagenet_split(directory: str, split: str) -> tuple[list[str], list[int]]:
  """Paths and labels of ImageNet's train/ folder, or of val/ for 'test'."""
  split_dir = os.path.join(directory, 'train' if split == 'train' else 'val')
  if not os.path.isdir(split_dir):
    raise datasets.files_error('imagenet2012', directory,
                               f'missing the folder {os.path.basename(split_dir)}/')
  wnids = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
  paths, labels = [], []
  for label, wnid in enumerate(wnids):
    folder = os.path.join(split_dir, wnid)
    files = _image_files(folder)
    paths += [os.path.join(folder, f) for f in files]
    labels += [label] * len(files)
  return paths, labels


def _image_files(folder: str) -> list[str]:
  """Sorted names of the image files in `folder`."""
  return sorted(f for f in os.listdir(folder) if f.lower().endswith(_IMAGE_EXTENSIONS))


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
    raise datasets.DataError(
        f'config.data.source=\'tfds\' needs {" and ".join(missing)}, which is not installed. '
        f'Fix: pip install {" ".join(missing)} (\'tensorflow\' off x86-64), or read the '
        'canonical files with config.data.source=\'local\' and config.data.dir (README, Data).')
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


class TfdsSource:
  """A tfds dataset prepared in the ArrayRecord format, read with tfds.data_source.

  Reading needs no TensorFlow; preparing the dataset (the first use) does.
  """

  def __init__(self, name: str, split: str, data_dir: str):
    """Args: the tfds builder name and split; data_dir: '' = the tfds default."""
    tfds = import_tfds(needs_tensorflow=False)
    builder = tfds.builder(name, data_dir=data_dir or None)
    if not builder.is_prepared():
      import_tfds(needs_tensorflow=True)  # a DataError if TensorFlow is missing
    self._source = tfds.data_source(name, split=split, data_dir=data_dir or None)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    example = self._source[index]
    return np.asarray(example['image']), int(example['label'])

  @staticmethod
  def read_shard(name: str, split: str, data_dir: str, process_index: int,
                 process_count: int) -> tuple[np.ndarray, np.ndarray]:
    """The process_index-th of process_count even parts (tfds.even_splits) of a tfds split,
    read whole with tfds.load (needs TensorFlow; reads the dataset in whatever format it was
    prepared, downloading and preparing it first if needed): uint8 (n, H, W, C), int32 (n,)."""
    tfds = import_tfds(needs_tensorflow=True)
    images, labels = tfds.as_numpy(tfds.load(
        name, split=tfds.even_splits(split, process_count)[process_index], batch_size=-1,
        as_supervised=True, data_dir=data_dir or None))
    return images, labels.astype(np.int32)
