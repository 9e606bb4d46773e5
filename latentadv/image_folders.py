"""Datasets stored as folders of image files, read by random access.

Two layouts:
  tiny_imagenet: the `tiny-imagenet-200/` folder as distributed: wnids.txt,
    train/<wnid>/images/*.JPEG (the 'train' split) and val/images/*.JPEG labelled by
    val/val_annotations.txt (the 'test' split; the distributed test/ folder has no labels).
  imagenet2012: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (the usual layout after sorting the
    validation images into class folders); 'test' reads val/.
Classes are numbered in sorted wnid order (as torchvision's ImageFolder and tfds number them).
`config.data.dir` is the layout's folder or its parent holding it under FOLDER_NAMES[name].
"""

import os

import numpy as np
from PIL import Image

FOLDER_NAMES = {'tiny_imagenet': 'tiny-imagenet-200', 'imagenet2012': 'imagenet2012'}
_IMAGE_EXTENSIONS = ('.jpeg', '.jpg', '.png')
_LAYOUTS = {
    'tiny_imagenet': 'wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and '
                     'val/val_annotations.txt (the tiny-imagenet-200.zip archive, unpacked)',
    'imagenet2012': 'train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (ILSVRC2012 train and val '
                    'archives unpacked, the val images sorted into class folders)',
}


class DataError(ValueError):
  """A dataset cannot be read: missing directory or file, or a malformed or damaged file."""


class FolderSource:
  """Random access to the images of one split: source[i] -> (uint8 (H, W, 3), int label)."""

  def __init__(self, paths: list[str], labels: np.ndarray):
    self.paths = paths
    self.labels = labels

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    return read_rgb(self.paths[index]), int(self.labels[index])


def read_rgb(path: str) -> np.ndarray:
  """Decodes an image file as uint8 RGB (H, W, 3) (grayscale and CMYK files converted)."""
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert('RGB'))
  except (OSError, SyntaxError, ValueError) as e:
    raise DataError(f'Cannot decode the image {path!r} ({e}); the file is damaged or is not '
                      'an image. Replace it from the original archive.') from None


def open_folder(name: str, root: str, split: str) -> FolderSource:
  """The split ('train' or 'test') of dataset `name` under `root`; raises DataError with
  the expected layout when files or folders are missing."""
  if name not in FOLDER_NAMES:
    raise ValueError(f'{name!r} has no folder layout; valid: {sorted(FOLDER_NAMES)}.')
  if not root:
    raise _error(name, root, 'config.data.dir is empty')
  nested = os.path.join(root, FOLDER_NAMES[name])
  directory = nested if os.path.isdir(nested) else root
  if not os.path.isdir(directory):
    raise _error(name, directory, 'the directory does not exist')
  list_split = _tiny_imagenet_split if name == 'tiny_imagenet' else _imagenet_split
  paths, labels = list_split(directory, split)
  if not paths:
    raise _error(name, directory, f'no images for the {split!r} split')
  return FolderSource(paths, np.asarray(labels, np.int32))


def _tiny_imagenet_split(directory: str, split: str) -> tuple[list[str], list[int]]:
  """Paths and labels of Tiny-ImageNet's train split, or of its validation set for 'test'."""
  wnids_path = os.path.join(directory, 'wnids.txt')
  if not os.path.isfile(wnids_path):
    raise _error('tiny_imagenet', directory, 'missing wnids.txt')
  with open(wnids_path) as f:
    wnids = sorted(line.strip() for line in f if line.strip())
  label_of = {wnid: label for label, wnid in enumerate(wnids)}
  if split == 'train':
    paths, labels = [], []
    for wnid in wnids:
      folder = os.path.join(directory, 'train', wnid, 'images')
      if not os.path.isdir(folder):
        raise _error('tiny_imagenet', directory, f'missing the folder train/{wnid}/images')
      files = _image_files(folder)
      paths += [os.path.join(folder, f) for f in files]
      labels += [label_of[wnid]] * len(files)
    return paths, labels
  annotations = os.path.join(directory, 'val', 'val_annotations.txt')
  if not os.path.isfile(annotations):
    raise _error('tiny_imagenet', directory, 'missing val/val_annotations.txt')
  paths, labels = [], []
  with open(annotations) as f:
    for line in f:
      fields = line.split('\t')
      if len(fields) < 2 or fields[1] not in label_of:
        raise _error('tiny_imagenet', directory,
                     f'val/val_annotations.txt has a malformed line {line.strip()!r}')
      paths.append(os.path.join(directory, 'val', 'images', fields[0]))
      labels.append(label_of[fields[1]])
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise _error('tiny_imagenet', directory, f'{len(missing)} validation images listed in '
                 f'val/val_annotations.txt are missing, e.g. {os.path.relpath(missing[0], directory)}')
  return paths, labels


def _imagenet_split(directory: str, split: str) -> tuple[list[str], list[int]]:
  """Paths and labels of ImageNet's train/ folder, or of val/ for 'test'."""
  split_dir = os.path.join(directory, 'train' if split == 'train' else 'val')
  if not os.path.isdir(split_dir):
    raise _error('imagenet2012', directory, f'missing the folder {os.path.basename(split_dir)}/')
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


def _error(name: str, directory: str, problem: str) -> DataError:
  """One message naming the folder, the problem, the expected layout and the fix."""
  return DataError(
      f'Cannot read {name} in {directory!r}: {problem}. Expected {_LAYOUTS[name]}. Fix: point '
      f"config.data.dir at that folder (or at its parent holding it as '{FOLDER_NAMES[name]}/')"
      + (", or set config.data.source='tfds' with a prepared tfds imagenet2012"
         if name == 'imagenet2012' else '') + '.')
