"""SLAT: single-step latent adversarial training (Park & Lee, ICCV 2021).

Pass 1 runs the model on the clean batch with zero perturbations at the input and at every
tap in `taps`, and ONE backward pass (`jax.vjp` at delta = 0) returns the gradient with respect
to the input and to every tapped feature map together; the latent gradients therefore cost
nothing beyond FGSM's input gradient. Parameter gradients are not requested in pass 1, and its
BatchNorm statistics are discarded.

Perturbations, without a random start:
  input:      delta_x = clip(alpha * eps * sign(g_x), -eps, eps), x + delta_x clipped to [0, 1];
  latent l:   delta_l = clip(2 * alpha * eps_h * sign(g_l), -eps_h, eps_h) (= eps_h * sign(g_l)
              for alpha >= 0.5), in raw feature units; the model's tap keeps h_l + delta_l in the
              per-sample, per-channel range of the pass-2 feature map (see models/taps.py).
              eps_h is the input radius eps unless set: the reference code has one radius for
              the input and the latent taps.
              Beyond the paper, `eps_h_scale='feature_std'` makes the radius scale-free: per
              channel c, eps_h * std_c / reference_feature_std, with std_c the standard
              deviation of the clean tapped feature map over the batch and spatial positions
              (recorded by the taps in pass 1, a constant for differentiation).
Pass 2 trains on the cross-entropy of the perturbed forward only; its BatchNorm statistics are
kept. By default pass 1's are not (docs/methods.md); `clean_pass_updates_bn` keeps them too, as the
reference code does: pass 1 then runs BatchNorm in train mode and updates the running averages
with the clean batch, and pass 2 updates them again with the perturbed one. Without it, the
running averages only ever see perturbed inputs, which at small scale misfits clean images
(see the README's CIFAR-10 results).
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax
from ml_collections import config_dict

from latentadv import models
from latentadv.methods import base
from latentadv.methods import common
from latentadv.models import taps


# Radius scales of the latent step (config.method.slat.eps_h_scale).
EPS_H_SCALES = ('absolute', 'feature_std')


def default_config() -> ml_collections.ConfigDict:
  """alpha: input step as a fraction of eps; eps_h: latent radius (None = eps, as the
  reference code); taps: perturbed features; clean_pass_updates_bn: pass 1 updates the
  BatchNorm running averages (reference code); eps_h_scale: 'absolute' (the paper: eps_h in
  raw feature units) or 'feature_std' (eps_h * std_c / reference_feature_std per channel c of
  the clean tapped feature map; the reference 0.57 is the mean per-channel std of the `stem` and
  `stage1` features of the PyTorch-initialised PreActResNet-18 on CIFAR-10, so the two scales
  agree on average at that initialisation)."""
  return ml_collections.ConfigDict(dict(alpha=0.9, eps_h=config_dict.placeholder(float),
                                        taps=('stem', 'stage1'), clean_pass_updates_bn=False,
                                        eps_h_scale='absolute', reference_feature_std=0.57))


def latent_radius(config) -> float:
  """SLAT's latent radius eps_h of `config.method`: config.slat.eps_h, or eps when unset."""
  return config.eps if config.slat.eps_h is None else config.slat.eps_h


def tap_radius(config, feature_std: jax.Array | float | None = None) -> jax.Array | float:
  """SLAT's latent radius at one tap under `config.method` (here `config`): eps_h, or with
  eps_h_scale='feature_std' eps_h * feature_std / reference_feature_std, where feature_std is
  the clean tapped feature map's per-channel std (C,) (or any std of it, e.g. a scalar)."""
  radius = latent_radius(config)
  if config.slat.eps_h_scale == 'feature_std':
    radius = radius * feature_std / config.slat.reference_feature_std
  return radius


def zero_perturbations(apply_fn, variables, x: jax.Array, names) -> dict[str, jax.Array]:
  """Zeros shaped like the feature maps at the taps `names` for input x (B, H, W, C)."""
  shapes = models.tap_shapes(apply_fn, variables, x.shape)
  missing = sorted(set(names) - set(shapes))
  if missing:
    raise ValueError(f'config.method.slat.taps names {missing}, which the model does not have; '
                     f'its taps are {sorted(shapes)}.')
  return {name: jnp.zeros(shapes[name].shape, shapes[name].dtype) for name in names}


def input_and_latent_gradients(forward_fn, x: jax.Array, labels: jax.Array, deltas):
  """Gradients of the summed CE w.r.t. x (B, H, W, C) and each tap delta, from one vjp.

  forward_fn(x, deltas) -> (logits (B, K), aux); returns (grad_x, grad_deltas, aux).
  """
  def summed_loss(x, deltas):
    logits, aux = forward_fn(x, deltas)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum(), aux
  _, pullback, aux = jax.vjp(summed_loss, x, deltas, has_aux=True)
  return (*pullback(jnp.ones(())), aux)


def perturb(apply_fn, params, model_state, x: jax.Array, labels: jax.Array, rng: jax.Array,
            config):
  """Pass 1: returns (x_adv, latent deltas, g_x, model_state for pass 2).

  x_adv and the deltas (one per tap) are the documented SLAT perturbations, as constants; g_x
  is the clean input gradient (B, H, W, C); the model state is pass 1's update of the
  BatchNorm running averages with `clean_pass_updates_bn`, else model_state unchanged.
  """
  eps, cfg = config.eps, config.slat
  zeros = zero_perturbations(apply_fn, {'params': params, **model_state}, x, cfg.taps)
  capture = (taps.FEATURE_STD,) if cfg.eps_h_scale == 'feature_std' else ()

  def forward_fn(x, deltas):
    logits, state = common.forward(
        apply_fn, params, model_state, x, rng, perturbations=deltas, capture=capture,
        train=cfg.clean_pass_updates_bn or config.attack_bn == 'train')
    feature_std = state.pop(taps.FEATURE_STD, {})
    return logits, (state if cfg.clean_pass_updates_bn else model_state, feature_std)

  grad_x, grad_latent, (pass2_state, feature_std) = input_and_latent_gradients(
      forward_fn, x, labels, zeros)
  delta_x = jnp.clip(cfg.alpha * eps * jnp.sign(grad_x), -eps, eps)
  x_adv = jnp.clip(x + delta_x, 0.0, 1.0)
  deltas = {}
  for name, g in grad_latent.items():
    radius = tap_radius(config, feature_std.get(name))
    deltas[name] = jnp.clip(2 * cfg.alpha * radius * jnp.sign(g), -radius, radius)
  return (jax.lax.stop_gradient(x_adv), jax.lax.stop_gradient(deltas), grad_x,
          jax.lax.stop_gradient(pass2_state))


def loss(apply_fn, params, model_state, batch, rng, config):
  """Cross-entropy of the SLAT-perturbed forward pass; see the module docstring."""
  attack_rng, train_rng = jax.random.split(rng)
  x, y = batch['image'], batch['label']
  x_adv, deltas, _, model_state = perturb(apply_fn, params, model_state, x, y, attack_rng,
                                          config)
  return common.train_on(apply_fn, params, model_state, x_adv, y, train_rng, perturbations=deltas)


def check(config, require: base.Require):
  """config.method.slat.eps_h_scale names a scale of EPS_H_SCALES."""
  scale = config.method.slat.eps_h_scale
  require(scale in EPS_H_SCALES, 'method.slat.eps_h_scale', scale,
          f'one of {sorted(EPS_H_SCALES)}')


METHOD = base.Method(name='slat', loss=loss, default_config=default_config, single_step=True,
                     check=check)
