r"""Can the GAN's parts draw digits when the condition is the label itself?

The audio -> image GAN (experiments/avmnist_gan.py) mixes two questions: does the two-player
recipe work, and does the audio embedding carry the digit. This trains the same generator
(model.Decoder or model.ConvDecoder) and discriminator (model.Discriminator) on MNIST with a
learned embedding of the true label as the condition, alternating one discriminator and one
generator Adam step (lr 2e-4, b1 0.5, batch 64), and scores what it draws: the per-class
diversity the reconstruction evaluator reports (mean RMS pixel distance between two images
of one class; real MNIST digits: 0.31), and a picture (one row per class).

  python scripts/gan_check.py --generator=conv --loss=hinge --steps=1000 --out=runs/gan_check/conv_hinge.png

Reads the MNIST idx files from ../shared/data/mnist (or --mnist). docs/results.md ("audio ->
image") reports its runs.
"""
from __future__ import annotations

import argparse
import gzip
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from crossmodal import objectives
from crossmodal.evaluators import reconstruction
from crossmodal.models import model as model_lib

MNIST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '..',
                     'shared', 'data', 'mnist')
NOISE, EMBED, BATCH = 32, 64, 64


def load_mnist(root: str) -> tuple[np.ndarray, np.ndarray]:
  """Train images in [0, 1] [N, 28, 28, 1] and labels [N]."""
  def read(name: str, offset: int) -> np.ndarray:
    path = os.path.join(root, name)
    if not os.path.exists(path):
      sys.exit(f'gan_check: {path} not found; pass --mnist=<directory with the MNIST idx .gz '
               'files> (docs/data.md says where to get them)')
    with gzip.open(path) as f:
      return np.frombuffer(f.read(), np.uint8, offset=offset)
  images = read('train-images-idx3-ubyte.gz', 16).reshape(-1, 28, 28, 1)
  return images.astype(np.float32) / 255.0, read('train-labels-idx1-ubyte.gz', 8).astype(np.int32)


class Generator(nn.Module):
  kind: str

  @nn.compact
  def __call__(self, label, noise, train: bool = True):
    x = jnp.concatenate([nn.Embed(10, EMBED)(label), noise], -1)
    if self.kind == 'conv':
      return model_lib.ConvDecoder((28, 28, 1), 64)(x, train)
    return model_lib.Decoder((28, 28, 1), (512,))(x)


class Critic(nn.Module):
  @nn.compact
  def __call__(self, image, label, train: bool = True):
    return model_lib.Discriminator()(image, nn.Embed(10, EMBED)(label), train)


def train(kind: str, loss: str, steps: int, images: np.ndarray, labels: np.ndarray,
          seed: int = 0, log_every: int = 100):
  g, d = Generator(kind), Critic()
  key = jax.random.key(seed)
  gv = g.init(key, labels[:2], jnp.zeros((2, NOISE)))
  dv = d.init(key, images[:2], labels[:2])
  tx = optax.adam(2e-4, b1=0.5)
  gs, ds = tx.init(gv['params']), tx.init(dv['params'])

  def generate(gvars, y, z):
    return g.apply(gvars, y, z, mutable=['batch_stats'])  # (images, new batch_stats)

  @jax.jit
  def step(gv, dv, gs, ds, x, y, key):
    z = jax.random.normal(key, (x.shape[0], NOISE))
    fake, g_stats = generate(gv, y, z)

    def d_loss(params):
      real_logit, stats = d.apply({**dv, 'params': params}, x, y, mutable=['batch_stats'])
      fake_logit, stats = d.apply({**dv, **stats, 'params': params},
                                  jax.lax.stop_gradient(fake), y, mutable=['batch_stats'])
      losses, _ = objectives.adversarial_losses(real_logit, fake_logit, fake_logit, loss)
      accuracy = ((real_logit > 0).mean() + (fake_logit < 0).mean()) / 2
      return losses.mean(), (stats, accuracy)

    (dl, (d_stats, accuracy)), grads = jax.value_and_grad(d_loss, has_aux=True)(dv['params'])
    updates, ds = tx.update(grads, ds)
    dv = {**dv, **d_stats, 'params': optax.apply_updates(dv['params'], updates)}

    def g_loss(params):
      fake, stats = generate({**gv, 'params': params}, y, z)
      logit = d.apply(dv, fake, y, False)
      _, losses = objectives.adversarial_losses(logit, logit, logit, loss)
      return losses.mean(), stats

    (gl, g_stats), grads = jax.value_and_grad(g_loss, has_aux=True)(gv['params'])
    updates, gs = tx.update(grads, gs)
    gv = {**gv, **g_stats, 'params': optax.apply_updates(gv['params'], updates)}
    return gv, dv, gs, ds, dl, gl, accuracy

  rng = np.random.default_rng(seed)
  for i in range(1, steps + 1):
    idx = rng.integers(0, len(images), BATCH)
    gv, dv, gs, ds, dl, gl, acc = step(gv, dv, gs, ds, images[idx], labels[idx],
                                       jax.random.fold_in(key, i))
    if i % log_every == 0:
      print(f'step {i}: discriminator loss {float(dl):.3f}, generator loss {float(gl):.3f}, '
            f'discriminator accuracy {float(acc):.3f}', flush=True)
  y = jnp.repeat(jnp.arange(10), 8)
  z = jax.random.normal(jax.random.key(seed + 1), (80, NOISE))
  drawn = g.apply(gv, y, z, train=False)
  return np.asarray(drawn).reshape(10, 8, 28, 28)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--generator', choices=('mlp', 'conv'), default='conv')
  p.add_argument('--loss', choices=objectives.GAN_LOSSES, default='hinge')
  p.add_argument('--steps', type=int, default=1000)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--mnist', default=MNIST)
  p.add_argument('--out', default='', help='the picture (PNG), one row per class')
  a = p.parse_args(argv)
  images, labels = load_mnist(a.mnist)
  drawn = train(a.generator, a.loss, a.steps, images, labels, a.seed)
  labels = np.repeat(np.arange(drawn.shape[0]), drawn.shape[1])
  score = reconstruction.diversity(drawn.reshape(-1, *drawn.shape[2:]), labels)
  print(f'diversity {score:.3f} (real MNIST: 0.31)')
  if a.out:
    import PIL.Image  # pylint: disable=import-outside-toplevel
    os.makedirs(os.path.dirname(a.out) or '.', exist_ok=True)
    grid = np.concatenate([np.concatenate(list(row), 1) for row in drawn], 0)
    PIL.Image.fromarray((grid * 255).astype(np.uint8)).save(a.out)
    print(f'picture: {a.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
