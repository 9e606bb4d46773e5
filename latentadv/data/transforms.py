"""Image transforms: the uint8 -> [0, 1] conversion and the augmentation on the device, the
crops and resizes of varying-size images (ImageNet) on the host.

Device: `augment` (random crop with zero padding, horizontal flip) runs inside the jitted train
step on float images; `to_unit_interval` converts uint8 batches there (or on the host).
Host: `random_resized_crop` (training) and `center_crop` (evaluation) bring uint8 images of any
size to (size, size, C); the streaming pipeline (readers.py) applies them per record.
"""

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

_EVAL_RESIZE = 256 / 224  # resize the shorter side to size * this, then centre-crop `size`


def to_unit_interval(images):
  """uint8 images in [0, 255] as float32 in [0, 1] (numpy or jax arrays); floats unchanged."""
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 255
  return images


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
