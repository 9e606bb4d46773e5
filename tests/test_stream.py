"""Streaming input pipeline: same batches as the in-memory path, any process count, exact
resume, image-folder and tfds sources, clear errors for missing or damaged files."""

import os
import shutil

import chex
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from latentadv import base_config
from latentadv import evaluate
from latentadv import train_state
from latentadv import train
from latentadv.data import datasets
from latentadv.data import readers
from latentadv.data import sources
from latentadv.data import transforms

from conftest import DATA_ROOT

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


def test_resumed_stream_run_ends_equal_to_an_uninterrupted_in_memory_run(tmp_path):
  config = base_config.apply_preset(base_config.get_config('smoke'), 'smoke')
  config.method.name = 'fgsm_rs'
  config.data.source, config.data.dir = 'local', os.path.join(DATA_ROOT, 'cifar10')
  config.train.eval_every_epochs = 0
  full = train.train_and_evaluate(config, str(tmp_path / 'memory'))
  assert config.train.checkpoint_every_steps == full['steps'] // config.optim.epochs

  config.data.pipeline = 'stream'
  interrupted = str(tmp_path / 'stream')
  train.train_and_evaluate(config, interrupted)
  shutil.rmtree(os.path.join(interrupted, 'checkpoints', str(full['steps'])))
  resumed = train.train_and_evaluate(config, interrupted)

  def final_variables(workdir):
    return train_state.restore_variables(workdir, evaluate.load_config(workdir))[1]
  chex.assert_trees_all_equal(final_variables(str(tmp_path / 'memory')),
                              final_variables(interrupted))
  for key in ('clean_accuracy', 'pgd_accuracy'):
    assert resumed['final'][key] == full['final'][key]
