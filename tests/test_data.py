"""The data package (latentadv/data): local and tfds readers, clear errors for missing or
damaged files, the seeded training stream, augmentation, evaluation batches, and the streaming
pipeline (the in-memory batches at any process count, image folders, tfds data sources)."""

import gzip
import os
import shutil
from unittest import mock

import chex
import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from latentadv import base_config
from latentadv.data import datasets
from latentadv.data import readers
from latentadv.data import sources
from latentadv.data import transforms

from conftest import DATA_ROOT


MNIST_FILES = ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
               't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')
CIFAR10_FILES = tuple(f'data_batch_{i}.bin' for i in range(1, 6)) + ('test_batch.bin',)


def _config(name, source='local', directory=DATA_ROOT, tfds_data_dir=''):
  return ml_collections.ConfigDict(
      {'name': name, 'source': source, 'dir': directory, 'tfds_data_dir': tfds_data_dir})


@pytest.fixture(scope='module')
def load():
  """Loads each (name, split) of the real local data at most once per module."""
  cache = {}

  def get(name, split):
    if (name, split) not in cache:
      cache[name, split] = readers.load_split(_config(name), split)
    return cache[name, split]

  return get


@pytest.mark.parametrize('name, split, counts', [
    ('mnist', 'train', [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]),
    ('mnist', 'test', [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]),
    ('fashion_mnist', 'train', [6000] * 10),
    ('fashion_mnist', 'test', [1000] * 10),
    ('cifar10', 'train', [5000] * 10),
    ('cifar10', 'test', [1000] * 10),
])
def test_local_split_shapes_range_and_label_counts(load, name, split, counts):
  images, labels = load(name, split)
  info = datasets.DATASETS[name]
  size = info.train_size if split == 'train' else info.test_size
  chex.assert_shape(images, (size, *info.image_shape))
  chex.assert_shape(labels, (size,))
  assert images.dtype == np.float32 and labels.dtype == np.int32
  assert images.flags.c_contiguous
  assert images.min() == 0.0 and images.max() == 1.0
  np.testing.assert_array_equal(np.bincount(labels, minlength=10), counts)


def test_pixel_means_match_known_values_and_dataset_info(load):
  mnist, _ = load('mnist', 'train')
  np.testing.assert_allclose(mnist.mean(dtype=np.float64), 0.13066, atol=1e-5)
  cifar, _ = load('cifar10', 'train')
  cifar_mean = cifar.reshape(-1, 3).mean(axis=0, dtype=np.float64)
  np.testing.assert_allclose(cifar_mean, (0.4914, 0.4822, 0.4465), atol=1e-4)
  fashion, _ = load('fashion_mnist', 'train')
  for name, images in [('mnist', mnist), ('fashion_mnist', fashion), ('cifar10', cifar)]:
    measured = images.reshape(-1, images.shape[-1]).mean(axis=0, dtype=np.float64)
    np.testing.assert_allclose(datasets.DATASETS[name].mean, measured, atol=1e-3)


def test_cifar10_records_are_transposed_to_hwc(load):
  # Known first test image (a cat): R plane starts 158, 159, 165 and B plane ends 124, 129, 110.
  images, labels = load('cifar10', 'test')
  assert labels[0] == 3
  np.testing.assert_array_equal(np.round(images[0, 0, :3, 0] * 255), [158, 159, 165])
  np.testing.assert_array_equal(np.round(images[0, -1, -3:, 2] * 255), [124, 129, 110])


@pytest.mark.parametrize('name, count', [('mnist', 2), ('mnist', 3), ('cifar10', 2)])
def test_process_shards_concatenate_to_the_whole_split(load, name, count):
  images, labels = load(name, 'test')
  shards = [readers.load_split(_config(name), 'test', i, count) for i in range(count)]
  expected_sizes = [len(part) for part in np.array_split(labels, count)]
  assert [len(shard_labels) for _, shard_labels in shards] == expected_sizes
  np.testing.assert_array_equal(np.concatenate([s[0] for s in shards]), images)
  np.testing.assert_array_equal(np.concatenate([s[1] for s in shards]), labels)


def test_local_dir_may_hold_the_files_directly():
  images, labels = readers.load_split(
      _config('mnist', directory=os.path.join(DATA_ROOT, 'mnist')), 'test', 1, 4)
  chex.assert_shape(images, (2500, 28, 28, 1))
  chex.assert_shape(labels, (2500,))


def _error_message(config, split='test'):
  with pytest.raises(datasets.DataError) as error:
    readers.load_split(config, split)
  assert isinstance(error.value, ValueError)
  return str(error.value)


def _assert_explains_fix(message, directory, expected_files):
  assert str(directory) in message
  for file_name in expected_files:
    assert file_name in message
  assert 'config.data.dir' in message
  assert "config.data.source='tfds'" in message


def test_missing_directory_raises_data_error(tmp_path):
  missing = tmp_path / 'nowhere'
  message = _error_message(_config('mnist', directory=str(missing)), 'train')
  _assert_explains_fix(message, missing, MNIST_FILES)
  assert 'does not exist' in message
  assert 'config.data.dir is empty' in _error_message(_config('mnist', directory=''))


def test_missing_file_is_named(tmp_path):
  shutil.copy(os.path.join(DATA_ROOT, 'mnist', 't10k-labels-idx1-ubyte.gz'), tmp_path)
  message = _error_message(_config('mnist', directory=str(tmp_path)))
  _assert_explains_fix(message, tmp_path, MNIST_FILES)
  assert 'missing t10k-images-idx3-ubyte.gz' in message


def _corrupt_mnist_test(tmp_path, file_name, content):
  """Copies the MNIST test files to tmp_path and overwrites `file_name` with `content`."""
  for name in ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'):
    shutil.copy(os.path.join(DATA_ROOT, 'mnist', name), tmp_path)
  (tmp_path / file_name).write_bytes(content)
  return _config('mnist', directory=str(tmp_path))


def _raw_idx(file_name):
  with gzip.open(os.path.join(DATA_ROOT, 'mnist', file_name), 'rb') as f:
    return f.read()


def test_truncated_gzip_raises_data_error(tmp_path):
  with open(os.path.join(DATA_ROOT, 'mnist', 't10k-images-idx3-ubyte.gz'), 'rb') as f:
    content = f.read(100000)
  message = _error_message(_corrupt_mnist_test(tmp_path, 't10k-images-idx3-ubyte.gz', content))
  _assert_explains_fix(message, tmp_path, MNIST_FILES)
  assert 't10k-images-idx3-ubyte.gz is not a complete gzip file' in message


def test_short_idx_payload_raises_data_error(tmp_path):
  content = gzip.compress(_raw_idx('t10k-images-idx3-ubyte.gz')[:-784], compresslevel=1)
  message = _error_message(_corrupt_mnist_test(tmp_path, 't10k-images-idx3-ubyte.gz', content))
  _assert_explains_fix(message, tmp_path, MNIST_FILES)
  assert 'truncated or corrupt' in message


def test_wrong_magic_number_raises_data_error(tmp_path):
  raw = _raw_idx('t10k-labels-idx1-ubyte.gz')
  content = gzip.compress((2051).to_bytes(4, 'big') + raw[4:])
  message = _error_message(_corrupt_mnist_test(tmp_path, 't10k-labels-idx1-ubyte.gz', content))
  _assert_explains_fix(message, tmp_path, MNIST_FILES)
  assert 'magic number 2051, expected 2049' in message


def test_truncated_cifar10_batch_raises_data_error(tmp_path):
  with open(os.path.join(DATA_ROOT, 'cifar10', 'test_batch.bin'), 'rb') as f:
    (tmp_path / 'test_batch.bin').write_bytes(f.read(3073 * 100))
  message = _error_message(_config('cifar10', directory=str(tmp_path)))
  _assert_explains_fix(message, tmp_path, CIFAR10_FILES)
  assert 'test_batch.bin has 307300 bytes, expected 30730000' in message


def test_datasets_without_local_reader_point_to_tfds():
  message = _error_message(_config('cifar100'))
  assert 'cifar100' in message and "config.data.source='tfds'" in message


def test_bad_arguments_raise_value_error():
  with pytest.raises(ValueError, match='Unknown dataset'):
    readers.load_split(_config('imagenet'), 'train')
  with pytest.raises(ValueError, match='split'):
    readers.load_split(_config('mnist'), 'validation')
  with pytest.raises(ValueError, match='source'):
    readers.load_split(_config('mnist', source='gcs'), 'test')
  with pytest.raises(ValueError, match='process_index'):
    readers.load_split(_config('mnist'), 'test', 2, 2)


@pytest.mark.parametrize('name', ['mnist', 'cifar10'])
def test_tfds_source_returns_float_images_and_int_labels(tmp_path, name):
  # Mocked tfds needs split sizes in the metadata to honour batch_size=-1.
  builder = tfds.builder(datasets.DATASETS[name].tfds_name, data_dir=str(tmp_path))
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=split, shard_lengths=[12], num_bytes=0)
      for split in ('train', 'test')]))
  os.makedirs(builder.data_dir)
  builder.info.write_to_directory(builder.data_dir)
  with tfds.testing.mock_data(num_examples=12, data_dir=str(tmp_path),
                              policy=tfds.testing.MockPolicy.USE_FILES):
    with mock.patch.object(tfds, 'load', wraps=tfds.load) as load:
      images, labels = readers.load_split(
          _config(name, source='tfds', tfds_data_dir=str(tmp_path)), 'train', 1, 2)
  assert load.call_args.kwargs['split'] == tfds.even_splits('train', 2)[1]
  chex.assert_shape(images, (12, *datasets.DATASETS[name].image_shape))
  assert images.dtype == np.float32 and labels.dtype == np.int32
  assert 0.0 <= images.min() and images.max() <= 1.0 and images.max() > 0.5
  assert set(labels.tolist()) <= set(range(10))


def _toy_examples(n=50):
  """n images (n, 2, 2, 1) whose pixels all equal their label, and labels arange(n)."""
  labels = np.arange(n, dtype=np.int32)
  images = np.broadcast_to(labels[:, None, None, None], (n, 2, 2, 1)).astype(np.float32)
  return images, labels


def test_train_stream_is_a_pure_function_of_seed_and_step():
  images, labels = _toy_examples()
  stream = readers.MemoryBatches(images, labels, batch_size=8, seed=3)
  assert stream.steps_per_epoch == 6
  late = stream.batch(13)  # Visit a later epoch first: batches must not depend on history.
  fresh = readers.MemoryBatches(images, labels, batch_size=8, seed=3)
  for step in (0, 5, 13):
    chex.assert_trees_all_equal(stream.batch(step), fresh.batch(step))
  chex.assert_trees_all_equal(late, fresh.batch(13))
  batch = stream.batch(0)
  chex.assert_shape(batch['image'], (8, 2, 2, 1))
  assert batch['image'].dtype == np.float32 and batch['label'].dtype == np.int32
  np.testing.assert_array_equal(batch['image'][:, 0, 0, 0], batch['label'])
  assert not np.array_equal(stream.batch(0)['label'], stream.batch(1)['label'])
  other_seed = readers.MemoryBatches(images, labels, batch_size=8, seed=4)
  assert not np.array_equal(stream.batch(0)['label'], other_seed.batch(0)['label'])


def test_train_stream_epoch_covers_distinct_examples_and_reshuffles():
  images, labels = _toy_examples()
  stream = readers.MemoryBatches(images, labels, batch_size=8, seed=0)
  epochs = [np.concatenate([stream.batch(e * 6 + i)['label'] for i in range(6)])
            for e in range(2)]
  for seen in epochs:
    assert len(np.unique(seen)) == 48  # 50 // 8 full batches, remainder dropped.
  assert not np.array_equal(epochs[0], epochs[1])
  with pytest.raises(ValueError, match='batch_size'):
    readers.MemoryBatches(images, labels, batch_size=51, seed=0)


def _random_images(batch=64, height=6, width=5, channels=3):
  return jax.random.uniform(jax.random.key(0), (batch, height, width, channels))


def test_augment_is_deterministic_and_keeps_shape():
  images = _random_images()
  augment = jax.jit(transforms.augment, static_argnames=('crop_padding', 'flip'))
  out = augment(jax.random.key(1), images, crop_padding=2, flip=True)
  chex.assert_shape(out, images.shape)
  chex.assert_type(out, images.dtype)
  chex.assert_trees_all_equal(out, augment(jax.random.key(1), images, crop_padding=2, flip=True))
  assert not np.array_equal(out, augment(jax.random.key(2), images, crop_padding=2, flip=True))


def test_augment_without_crop_or_flip_is_identity():
  images = _random_images()
  chex.assert_trees_all_equal(transforms.augment(jax.random.key(1), images, 0, False), images)


def test_augment_flip_mirrors_some_images_and_keeps_others():
  images = np.asarray(_random_images())
  out = np.asarray(transforms.augment(jax.random.key(1), images, crop_padding=0, flip=True))
  kept = np.all(out == images, axis=(1, 2, 3))
  mirrored = np.all(out == images[:, :, ::-1], axis=(1, 2, 3))
  assert np.all(kept ^ mirrored)
  assert kept.any() and mirrored.any()


def test_augment_crop_shifts_content_within_padding():
  pad = 2
  images = np.asarray(_random_images())
  height, width = images.shape[1:3]
  out = np.asarray(transforms.augment(jax.random.key(1), images, crop_padding=pad, flip=False))
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = set()
  for i in range(len(images)):
    matches = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
               if np.array_equal(out[i], padded[i, dy:dy + height, dx:dx + width])]
    assert len(matches) == 1
    offsets.add(matches[0])
  assert len(offsets) > 5  # Many different shifts, not just the centred (identity) crop.


def test_eval_batches_cover_every_example_once_with_masks():
  images, labels = _toy_examples(10)
  batches = list(readers.eval_batches(images, labels, batch_size=4))
  assert len(batches) == 3
  for batch in batches:
    chex.assert_shape([batch['image'], batch['label'], batch['mask']],
                      [(4, 2, 2, 1), (4,), (4,)])
    assert batch['mask'].dtype == bool
  np.testing.assert_array_equal(batches[-1]['mask'], [True, True, False, False])
  np.testing.assert_array_equal(batches[-1]['image'][2:], 0)
  seen = np.concatenate([b['label'][b['mask']] for b in batches])
  np.testing.assert_array_equal(seen, labels)


def test_eval_batches_pad_to_num_batches_across_processes():
  images, labels = _toy_examples(10)
  process_count, batch_size = 4, 2
  num_batches = readers.eval_num_batches(10, process_count, batch_size)
  assert num_batches == 2  # Shards of 3, 3, 2, 2 examples.
  seen = []
  for shard in np.array_split(np.arange(10), process_count):
    batches = list(readers.eval_batches(images[shard], labels[shard], batch_size, num_batches))
    assert len(batches) == num_batches
    seen.extend(np.concatenate([b['label'][b['mask']] for b in batches]))
  np.testing.assert_array_equal(seen, labels)
  extra = list(readers.eval_batches(images, labels, batch_size=4, num_batches=5))
  assert [b['mask'].sum() for b in extra] == [4, 4, 2, 0, 0]
  assert readers.eval_num_batches(10000, 3, 128) == 27  # Largest shard: 3334 examples.
  with pytest.raises(ValueError, match='num_batches'):
    list(readers.eval_batches(images, labels, batch_size=4, num_batches=2))


# -------------------------------------------------------------------------------- Streaming

WNIDS = ('n01443537', 'n01629819', 'n01641577')


def _data_config(name, directory, pipeline='stream', source='local', num_train_examples=0):
  config = base_config.get_config().data
  config.name, config.dir, config.source = name, directory, source
  config.pipeline, config.num_train_examples = pipeline, num_train_examples
  config.stream_threads = 2
  return config


def _write_jpeg(path, shape, seed, mode='RGB'):
  pixels = np.random.default_rng(seed).integers(0, 256, shape, np.uint8)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(pixels, mode).save(path, quality=95)


@pytest.fixture(scope='module')
def tiny_imagenet(tmp_path_factory):
  """A tiny-imagenet-200 folder: 3 classes x 4 training JPEGs (one grayscale), 6 validation."""
  root = tmp_path_factory.mktemp('data') / 'tiny-imagenet-200'
  (root / 'val' / 'images').mkdir(parents=True)
  (root / 'wnids.txt').write_text('\n'.join(reversed(WNIDS)) + '\n')
  for c, wnid in enumerate(WNIDS):
    for i in range(4):
      shape = (64, 64) if (c, i) == (1, 2) else (64, 64, 3)
      _write_jpeg(str(root / 'train' / wnid / 'images' / f'{wnid}_{i}.JPEG'), shape, 10 * c + i,
                  'L' if len(shape) == 2 else 'RGB')
  lines = []
  for i in range(6):
    _write_jpeg(str(root / 'val' / 'images' / f'val_{i}.JPEG'), (64, 64, 3), 100 + i)
    lines.append(f'val_{i}.JPEG\t{WNIDS[i % 3]}\t0\t0\t63\t63')
  (root / 'val' / 'val_annotations.txt').write_text('\n'.join(lines) + '\n')
  return str(root.parent)


@pytest.fixture(scope='module')
def imagenet_folder(tmp_path_factory):
  """An ImageNet train/<wnid>/, val/<wnid>/ folder of 2 classes with JPEGs of varying size."""
  root = tmp_path_factory.mktemp('imagenet')
  for split, count in (('train', 6), ('val', 2)):
    for c, wnid in enumerate(WNIDS[:2]):
      for i in range(count):
        shape = (50 + 7 * i, 80 - 5 * i + c, 3)
        _write_jpeg(str(root / split / wnid / f'{wnid}_{i}.JPEG'), shape, 1000 * c + i)
  return str(root)


def test_cifar10_stream_gives_the_in_memory_batches():
  config = _data_config('cifar10', os.path.join(DATA_ROOT, 'cifar10'), num_train_examples=1000)
  streamed = readers.train_batches(config, 64, seed=3, process_index=0, process_count=1)
  config.pipeline = 'memory'
  in_memory = readers.train_batches(config, 64, seed=3, process_index=0, process_count=1)
  assert (isinstance(streamed, readers.StreamBatches)
          and isinstance(in_memory, readers.MemoryBatches))
  assert streamed.steps_per_epoch == in_memory.steps_per_epoch == 15
  for step in (0, 7, 31):  # 31 is in the third epoch
    batch = streamed.batch(step)
    assert batch['image'].dtype == np.uint8 and batch['label'].dtype == np.int32
    chex.assert_trees_all_equal(batch, in_memory.batch(step))


def test_parallel_reads_keep_the_order_of_steps():
  config = _data_config('cifar10', os.path.join(DATA_ROOT, 'cifar10'), num_train_examples=512)
  batches = readers.train_batches(config, 32, seed=0, process_index=0, process_count=1)
  read = list(batches.batches(5, 12))
  assert len(read) == 7
  for step, batch in zip(range(5, 12), read):
    chex.assert_trees_all_equal(batch, batches.batch(step))


@pytest.mark.parametrize('name', ['cifar10', 'imagenet2012'])
def test_global_batches_do_not_depend_on_the_process_count(name, imagenet_folder):
  directory = os.path.join(DATA_ROOT, 'cifar10') if name == 'cifar10' else imagenet_folder
  config = _data_config(name, directory, num_train_examples=512 if name == 'cifar10' else 0)
  batch_size = 8 if name == 'cifar10' else 4
  one = readers.train_batches(config, batch_size, 1, 0, 1)
  halves = [readers.train_batches(config, batch_size, 1, p, 2) for p in range(2)]
  for step in (0, 4, 9):
    parts = [half.batch(step) for half in halves]
    chex.assert_trees_all_equal(
        one.batch(step), {k: np.concatenate([p[k] for p in parts]) for k in parts[0]})


def test_imagenet_folder_gives_random_resized_crops_and_centre_crops(imagenet_folder):
  config = _data_config('imagenet2012', imagenet_folder)
  batches = readers.train_batches(config, 4, seed=0, process_index=0, process_count=1)
  assert batches.steps_per_epoch == 3
  batch = batches.batch(0)
  chex.assert_shape(batch['image'], (4, 224, 224, 3))
  assert not np.array_equal(batch['image'], batches.batch(3)['image'])  # new epoch, new crops
  images, labels = readers.eval_split(config, 'test')
  chex.assert_shape(images, (4, 224, 224, 3))
  np.testing.assert_array_equal(labels, [0, 0, 1, 1])


def test_random_resized_crop_and_centre_crop():
  image = np.random.default_rng(0).integers(0, 256, (90, 60, 3), np.uint8)
  crops = [transforms.random_resized_crop(image, 32, np.random.default_rng(s)) for s in (0, 0, 1)]
  chex.assert_shape(crops, (32, 32, 3))
  np.testing.assert_array_equal(crops[0], crops[1])
  assert not np.array_equal(crops[0], crops[2])
  uniform = np.full((90, 60, 3), 7, np.uint8)
  np.testing.assert_array_equal(transforms.center_crop(uniform, 48), np.full((48, 48, 3), 7))
  gradient = np.broadcast_to(np.arange(90, dtype=np.uint8)[:, None, None], (90, 60, 3))
  centre = transforms.center_crop(np.ascontiguousarray(gradient), 48)
  assert abs(int(centre[24, 24, 0]) - 45) <= 2  # the window is centred


def test_tiny_imagenet_folder_in_memory_and_streamed(tiny_imagenet):
  config = _data_config('tiny_imagenet', tiny_imagenet, pipeline='memory')
  images, labels = readers.load_split(config, 'train', dtype=np.uint8)
  chex.assert_shape(images, (12, 64, 64, 3))
  np.testing.assert_array_equal(labels, np.repeat([0, 1, 2], 4))  # sorted wnids, not file order
  test_images, test_labels = readers.load_split(config, 'test')
  assert test_images.dtype == np.float32 and test_images.max() <= 1.0
  np.testing.assert_array_equal(test_labels, [0, 1, 2, 0, 1, 2])
  source = sources.open_source(_data_config('tiny_imagenet', tiny_imagenet), 'train')
  for i in (0, 6, 11):
    np.testing.assert_array_equal(source[i][0], images[i])
    assert source[i][1] == labels[i]


def test_missing_folder_and_damaged_image_are_one_clear_error(tiny_imagenet, tmp_path):
  with pytest.raises(datasets.DataError, match=r'missing wnids.txt.*config.data.dir'):
    sources.open_source(_data_config('tiny_imagenet', str(tmp_path)), 'train')
  damaged = tmp_path / 'tiny-imagenet-200'
  shutil.copytree(os.path.join(tiny_imagenet, 'tiny-imagenet-200'), damaged)
  victim = damaged / 'train' / WNIDS[0] / 'images' / f'{WNIDS[0]}_1.JPEG'
  victim.write_bytes(victim.read_bytes()[:100])
  batches = readers.train_batches(_data_config('tiny_imagenet', str(tmp_path)), 12, 0, 0, 1)
  with pytest.raises(datasets.DataError, match=f'{WNIDS[0]}_1.JPEG.*damaged'):
    list(batches.batches(0, 2))


def test_truncated_cifar10_file_is_a_clear_error(tmp_path):
  for name in datasets.local_paths('cifar10', os.path.join(DATA_ROOT, 'cifar10'), 'train'):
    os.symlink(name, tmp_path / os.path.basename(name))
  os.remove(tmp_path / 'data_batch_3.bin')
  with open(os.path.join(DATA_ROOT, 'cifar10', 'data_batch_3.bin'), 'rb') as f:
    (tmp_path / 'data_batch_3.bin').write_bytes(f.read(3073 * 10))
  with pytest.raises(datasets.DataError, match='data_batch_3.bin has 30730 bytes'):
    sources.open_source(_data_config('cifar10', str(tmp_path)), 'train')


def test_tfds_imagenet2012_streams_from_its_data_source():
  config = _data_config('imagenet2012', '', source='tfds')
  with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
    batches = readers.train_batches(config, 4, seed=0, process_index=0, process_count=1)
    batch = next(batches.batches(0, 1))
    images, labels = readers.eval_split(config, 'test', 3)
  chex.assert_shape(batch['image'], (4, 224, 224, 3))
  assert batch['image'].dtype == np.uint8 and batch['label'].dtype == np.int32
  chex.assert_shape(images, (3, 224, 224, 3))
  assert labels.min() >= 0 and labels.max() < 1000


def test_memory_pipeline_refuses_imagenet():
  config = _data_config('imagenet2012', 'somewhere', pipeline='memory')
  with pytest.raises(datasets.DataError, match="pipeline='stream'"):
    readers.load_split(config, 'train')
