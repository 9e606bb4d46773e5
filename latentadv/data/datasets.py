"""The dataset registry and where each dataset's files live; the package's one error type.

Nothing here reads a file: it names the datasets (`DATASETS`), their local files and folder
layouts, their tfds builders and splits, and builds the error that says how to fix a missing
or damaged dataset. The sources (sources.py) and readers (readers.py) import it.
"""

import dataclasses
import os


class DataError(ValueError):
  """A dataset cannot be read: missing directory or file, or a malformed or damaged file."""


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
    # (FOLDER_LAYOUTS); its 'test' split is the labelled validation set. Its normalisation is
    # ImageNet's, as in the SLAT code's Tiny-ImageNet config.
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
# Datasets distributed as a few canonical files: {name: {split: file names}}.
LOCAL_FILES = {
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

# Datasets stored as folders of image files: {name: the folder's usual name}. Layouts:
#   tiny_imagenet: the `tiny-imagenet-200/` folder as distributed: wnids.txt,
#     train/<wnid>/images/*.JPEG (the 'train' split) and val/images/*.JPEG labelled by
#     val/val_annotations.txt (the 'test' split; the distributed test/ folder has no labels).
#   imagenet2012: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (the usual layout after sorting
#     the validation images into class folders); 'test' reads val/.
# Classes are numbered in sorted wnid order (as torchvision's ImageFolder and tfds number them).
FOLDER_NAMES = {'tiny_imagenet': 'tiny-imagenet-200', 'imagenet2012': 'imagenet2012'}
FOLDER_LAYOUTS = {
    'tiny_imagenet': 'wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and '
                     'val/val_annotations.txt (the tiny-imagenet-200.zip archive, unpacked)',
    'imagenet2012': 'train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (ILSVRC2012 train and val '
                    'archives unpacked, the val images sorted into class folders)',
}

# tfds split names that differ from ours: {(name, split): tfds split}.
_TFDS_SPLITS = {('imagenet2012', 'test'): 'validation'}


def tfds_names(name: str, split: str) -> tuple[str, str]:
  """The tfds builder name of dataset `name` and its name for `split` ('train' | 'test');
  DataError if tfds has no builder for it."""
  if not DATASETS[name].tfds_name:
    raise DataError(f'{name} has no tfds builder. Set config.data.source=\'local\' and '
                    f'config.data.dir to its {FOLDER_NAMES[name]}/ folder.')
  return DATASETS[name].tfds_name, _TFDS_SPLITS.get((name, split), split)


def dataset_dir(name: str, root: str) -> str:
  """The directory of dataset `name`: `root/<folder name>/` if it exists, else `root`;
  DataError saying how to fix it when root is empty or the directory does not exist."""
  if not root:
    raise files_error(name, root, 'config.data.dir is empty')
  nested = os.path.join(root, FOLDER_NAMES.get(name, name))
  directory = nested if os.path.isdir(nested) else root
  if not os.path.isdir(directory):
    raise files_error(name, directory, 'the directory does not exist')
  return directory


def local_paths(name: str, root: str, split: str) -> list[str]:
  """Paths of the canonical files of a split of `name` in `root` (or `root/<name>/`);
  DataError saying how to fix it when the directory or a file is missing."""
  if name not in LOCAL_FILES:
    raise DataError(
        f'Dataset {name!r} has no local-files reader (local files are supported for '
        f"{', '.join([*LOCAL_FILES, *FOLDER_NAMES])}). Set "
        "config.data.source='tfds' to load it with TensorFlow Datasets.")
  directory = dataset_dir(name, root)
  paths = [os.path.join(directory, f) for f in LOCAL_FILES[name][split]]
  missing = [os.path.basename(p) for p in paths if not os.path.isfile(p)]
  if missing:
    raise files_error(name, directory, f"missing {', '.join(missing)}")
  return paths


def files_error(name: str, directory: str, problem: str) -> DataError:
  """One message naming the directory, the problem, the expected files or folder layout,
  where to get them and the fixes."""
  if name in FOLDER_NAMES:
    return DataError(
        f'Cannot read {name} in {directory!r}: {problem}. Expected {FOLDER_LAYOUTS[name]}. Fix: '
        f"point config.data.dir at that folder (or at its parent holding it as "
        f"'{FOLDER_NAMES[name]}/')"
        + (", or set config.data.source='tfds' with a prepared tfds imagenet2012"
           if name == 'imagenet2012' else '') + '.')
  expected = [f for split in ('train', 'test') for f in LOCAL_FILES[name][split]]
  return DataError(
      f'Cannot read local {name} data in {directory!r}: {problem}. Expected the canonical '
      f"files {', '.join(expected)} (from {_DOWNLOADS[name]}). Fix: point config.data.dir "
      f"at a directory holding these files (or at its parent with a '{name}/' "
      "subdirectory), or set config.data.source='tfds' to download the dataset online.")
