r"""An independent PyTorch implementation of the default AV-MNIST model, for the benchmark.

Issue 6 asks how crossmodal's training throughput compares with what a researcher would
otherwise write: eager PyTorch in the style of MultiBench. This module is that baseline, written
against the same definition as `experiments/avmnist.py` (concat fusion of the MultiBench
LeNets, MLP head), so that scripts/benchmark.py can train both on the same batches:

  image: uint8 [B,28,28,1] -> /255 -> LeNet(1, 6, 3) -> 1x1x48 -> Linear 'pool_proj' -> 64
  audio: float32 waveform [B,8000] -> log-mel [B,1,101,64] (computed in the forward pass, as
         our model does on device) -> (x - spec_mean) / spec_std -> LeNet(1, 6, 5) -> 1x1x192
         -> Linear 'pool_proj' -> 64
  head:  concat [B,128] -> Linear 100 -> ReLU -> Linear 10 (no dropout: model.dropout = 0)

It uses PyTorch's native NCHW layout and runs eagerly (no torch.compile), as MultiBench does.
Only constants come from crossmodal (the mel filterbank, the window, the feature options and
the spectrogram statistics), so both models see identical inputs; the arithmetic is torch's.

  python scripts/torch_reference.py   # param counts, featurization diff, 5 steps at batch 8

Needs `pip install torch==2.13.0` (the optional `bench` extra).
"""
from __future__ import annotations

import importlib.util
import math
import pathlib
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from crossmodal.data import features as features_lib
from crossmodal.models import encoders as encoders_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
_AUDIO_DEFAULTS = encoders_lib.encoder_config('audio', 'lenet')  # spec_mean/std, features


# ----------------------------------------------------------------------------- featurization


class LogMel(nn.Module):
  """Waveform [B, T] -> log-mel dB [B, frames, n_mels], the torch twin of features.log_mel.

  Same definition: centred frames (zero padding of n_fft // 2 each side), the periodic Hann
  window, the rfft power spectrum, crossmodal's Slaney filterbank (as a constant), then
  power_to_db with amin and a per-clip top_db floor. Only the default 'db' scale with
  'constant' padding is implemented, which is what the AV-MNIST audio encoder uses.
  """

  def __init__(self, cfg: Any = None):
    super().__init__()
    p = features_lib.FeatureParams.from_config(cfg if cfg is not None
                                               else features_lib.features_config())
    if p.log_scale != 'db' or p.pad_mode != 'constant':
      raise ValueError(f'LogMel implements log_scale="db", pad_mode="constant"; got '
                       f'{p.log_scale!r}, {p.pad_mode!r}')
    self.p = p
    # Buffers, not parameters: they move with .to() but are neither trained nor counted.
    window = features_lib._window(p.n_fft, p.win_length)  # pylint: disable=protected-access
    self.register_buffer('window', torch.tensor(window, dtype=torch.float32), persistent=False)
    self.register_buffer('mel_t', torch.tensor(features_lib.mel_filterbank(p).T,
                                               dtype=torch.float32), persistent=False)

  def forward(self, waveform: torch.Tensor) -> torch.Tensor:
    p = self.p
    x = F.pad(waveform.float(), (p.n_fft // 2, p.n_fft // 2))
    frames = x.unfold(-1, p.n_fft, p.hop_length) * self.window  # [B, frames, n_fft]
    spectrum = torch.fft.rfft(frames, dim=-1)
    power = spectrum.real.square() + spectrum.imag.square()
    db = 10.0 * torch.log10(torch.clamp_min(power @ self.mel_t, p.amin))
    if p.top_db is not None:
      peak = db.amax(dim=(-2, -1), keepdim=True)
      db = torch.maximum(db, peak - p.top_db)
    return db


# ----------------------------------------------------------------------------- model


def _init_like_flax(module: nn.Module) -> None:
  """Initialises as our Flax model does, so both start from the same distribution:
  convs kaiming-uniform (encoders._conv_init), Linear lecun-normal (truncated, Flax's
  nn.Dense default) with zero bias; BatchNorm scale 1, bias 0 (both frameworks' default)."""
  for m in module.modules():
    if isinstance(m, nn.Conv2d):
      nn.init.kaiming_uniform_(m.weight, nonlinearity='relu')
    elif isinstance(m, nn.Linear):
      std = math.sqrt(1.0 / m.in_features) / 0.87962566103423978  # Flax's truncation fix
      nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
      nn.init.zeros_(m.bias)


class LeNet(nn.Module):
  """MultiBench LeNet(1, base, extra): conv5x5 then `extra` conv3x3, channels doubling,
  each conv (no bias: BatchNorm follows) -> BatchNorm -> ReLU -> 2x2 max-pool; then the
  final map is flattened and projected to `dim` (our 'pool_proj').

  BatchNorm momentum 0.1 is Flax's momentum 0.9 in the other convention; eps 1e-5 both.
  Unavoidable difference: torch's running variance uses the unbiased batch variance, Flax's
  the biased one (a factor n/(n-1)); it affects only evaluation, never the training step.
  """

  def __init__(self, base_channels: int, extra_layers: int, final_hw: tuple[int, int],
               dim: int):
    super().__init__()
    layers, c_in = [], 1
    for i in range(extra_layers + 1):
      c_out = base_channels * 2**i
      k = 5 if i == 0 else 3
      layers += [nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False),  # 'SAME' for odd k
                 nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.1), nn.ReLU(), nn.MaxPool2d(2)]
      c_in = c_out
    self.trunk = nn.Sequential(*layers)
    self.pool_proj = nn.Linear(c_in * final_hw[0] * final_hw[1], dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.pool_proj(self.trunk(x).flatten(1))


class AVMnistConcatTorch(nn.Module):
  """The default experiments/avmnist.py model (concat fusion) in PyTorch, NCHW.

  forward(image uint8 [B,28,28,1], audio float32 [B,8000]) -> logits [B, num_classes].
  """

  def __init__(self, dim: int = 64, hidden: int = 100, num_classes: int = 10,
               image_mean: float = 0.0, image_std: float = 1.0):
    super().__init__()
    a = _AUDIO_DEFAULTS
    self.log_mel = LogMel(a.features)
    self.spec_mean, self.spec_std = float(a.spec_mean), float(a.spec_std)
    self.image_mean, self.image_std = image_mean, image_std  # ImageLeNet: no normalisation
    self.image = LeNet(6, 3, (1, 1), dim)  # 28x28 -> 14 -> 7 -> 3 -> 1
    self.audio = LeNet(int(a.base_channels), int(a.extra_layers), (1, 1), dim)  # 101x64 -> 1x1
    self.hidden = nn.Linear(2 * dim, hidden)
    self.logits = nn.Linear(hidden, num_classes)
    _init_like_flax(self)

  def forward(self, image: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
    # encoders._image_to_float: uint8 -> [0, 1] -> (x - mean) / std; NHWC -> NCHW.
    x = (image.permute(0, 3, 1, 2).float() / 255.0 - self.image_mean) / self.image_std
    # encoders._spectrogram: [B, frames, n_mels] standardised, as a 1-channel image.
    spec = (self.log_mel(audio) - self.spec_mean) / self.spec_std
    fused = torch.cat([self.image(x), self.audio(spec.unsqueeze(1))], dim=1)
    return self.logits(F.relu(self.hidden(fused)))


def count_params(model: nn.Module | None = None) -> int:
  """Trainable parameters of the torch model (BatchNorm running stats are buffers, as our
  `batch_stats` are not counted by crossmodal.models.model.count_params)."""
  model = model if model is not None else AVMnistConcatTorch()
  return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _default_jax_model():
  """Our Flax model exactly as experiments/avmnist.py builds it by default."""
  from crossmodal.models import model as model_lib  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location('avmnist_config', REPO / 'experiments/avmnist.py')
  config_module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(config_module)
  return model_lib.build_model(config_module.get_config().model, num_classes=10)


def jax_count_params() -> int:
  """Parameter count of the model experiments/avmnist.py builds by default (abstract init)."""
  import jax  # pylint: disable=import-outside-toplevel
  from crossmodal.models import model as model_lib  # pylint: disable=import-outside-toplevel
  batch = {'image': jax.ShapeDtypeStruct((2, 28, 28, 1), np.uint8),
           'audio': jax.ShapeDtypeStruct((2, 8000), np.float32)}
  variables = jax.eval_shape(_default_jax_model().init, jax.random.PRNGKey(0), batch)
  return model_lib.count_params(variables)


# ----------------------------------------------------------------------------- checks & timing


def featurization_max_abs_diff(waveform_np: np.ndarray) -> float:
  """max |torch LogMel - crossmodal.data.features.log_mel| in dB on a float32 batch [B, T]."""
  cfg = _AUDIO_DEFAULTS.features
  ours = np.asarray(features_lib.log_mel(np.asarray(waveform_np, np.float32), cfg))
  with torch.no_grad():
    theirs = LogMel(cfg)(torch.from_numpy(np.asarray(waveform_np, np.float32))).numpy()
  return float(np.max(np.abs(ours - theirs)))


def load_jax_params(model: AVMnistConcatTorch, params: Mapping[str, Any]) -> None:
  """Copies our Flax `params` (of the default AV-MNIST model) into `model`, converting
  layouts (conv HWIO -> OIHW, Dense [in, out] -> [out, in])."""
  def copy(dst: torch.Tensor, src: Any, perm: tuple[int, ...] = ()) -> None:
    src = np.array(src, np.float32)  # a writable copy (jax arrays are read-only)
    dst.copy_(torch.from_numpy(np.ascontiguousarray(src.transpose(perm) if perm else src)))

  with torch.no_grad():
    for name, lenet in (('image_encoder', model.image), ('audio_encoder', model.audio)):
      p = params[name]
      convs = [m for m in lenet.trunk if isinstance(m, nn.Conv2d)]
      norms = [m for m in lenet.trunk if isinstance(m, nn.BatchNorm2d)]
      for i, (conv, norm) in enumerate(zip(convs, norms)):
        copy(conv.weight, p[f'conv_{i}']['kernel'], (3, 2, 0, 1))
        copy(norm.weight, p[f'norm_{i}']['scale'])
        copy(norm.bias, p[f'norm_{i}']['bias'])
      copy(lenet.pool_proj.weight, p['pool_proj']['kernel'], (1, 0))
      copy(lenet.pool_proj.bias, p['pool_proj']['bias'])
    head = params['fusion']['head']
    for layer, key in ((model.hidden, 'hidden_0'), (model.logits, 'logits')):
      copy(layer.weight, head[key]['kernel'], (1, 0))
      copy(layer.bias, head[key]['bias'])


def logits_max_abs_diff(batch: Mapping[str, np.ndarray], seed: int = 0) -> float:
  """max |torch logits - crossmodal logits| with the same weights, in training mode (batch
  statistics), on one batch: shows the two forward passes compute the same function."""
  import jax  # pylint: disable=import-outside-toplevel
  model = _default_jax_model()
  inputs = {'image': batch['image'], 'audio': batch['audio']}
  variables = model.init(jax.random.PRNGKey(seed), inputs)
  ours, _ = model.apply(variables, inputs, train=True, mutable=['batch_stats'])
  torch_model = AVMnistConcatTorch().train()
  load_jax_params(torch_model, variables['params'])
  image, audio, _ = _to_torch(batch)
  with torch.no_grad():
    theirs = torch_model(image, audio).numpy()
  return float(np.max(np.abs(np.asarray(ours['logits']) - theirs)))


def _to_torch(batch: Mapping[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
  return (torch.from_numpy(np.ascontiguousarray(batch['image'])),
          torch.from_numpy(np.ascontiguousarray(batch['audio'], dtype=np.float32)),
          torch.from_numpy(np.asarray(batch['label'], np.int64)))  # cross_entropy wants int64


def train_throughput(batches: Sequence[Mapping[str, np.ndarray]], steps: int, threads: int,
                     lr: float = 0.01, momentum: float = 0.9, warmup: int = 3,
                     repeats: int = 3, seed: int = 0) -> dict[str, Any]:
  """Trains AVMnistConcatTorch with SGD + momentum and softmax cross-entropy (mean over the
  batch, as crossmodal.train) cycling through `batches`, and times it.

  Batches are converted to tensors before timing (our side likewise trains on batches already
  in memory), `warmup` steps are excluded, and `repeats` blocks of `steps` steps are timed;
  a block ends with loss.item(), so all its work has finished. The global torch thread count
  is restored afterwards.
  Returns examples_per_sec_median / _all, batch_size, threads, torch_version, final_loss.
  """
  if not batches or steps < 1 or repeats < 1 or warmup < 0:
    raise ValueError(f'train_throughput: need batches, steps >= 1, repeats >= 1, warmup >= 0; '
                     f'got {len(batches)} batches, steps={steps}, repeats={repeats}, '
                     f'warmup={warmup}')
  sizes = {len(b['label']) for b in batches}
  if len(sizes) != 1:
    raise ValueError(f'train_throughput: batches must share one batch size, got {sorted(sizes)}')
  batch_size = sizes.pop()
  previous_threads = torch.get_num_threads()
  torch.set_num_threads(threads)
  try:
    torch.manual_seed(seed)
    model = AVMnistConcatTorch().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    data = [_to_torch(b) for b in batches]
    step_count = 0

    def step() -> torch.Tensor:
      nonlocal step_count
      image, audio, label = data[step_count % len(data)]
      step_count += 1
      optimizer.zero_grad(set_to_none=True)
      loss = F.cross_entropy(model(image, audio), label)
      loss.backward()
      optimizer.step()
      return loss

    for _ in range(warmup):
      loss = step()
    rates = []
    for _ in range(repeats):
      start = time.perf_counter()
      for _ in range(steps):
        loss = step()
      final_loss = loss.item()
      rates.append(steps * batch_size / (time.perf_counter() - start))
  finally:
    torch.set_num_threads(previous_threads)
  return {'examples_per_sec_median': statistics.median(rates), 'examples_per_sec_all': rates,
          'batch_size': batch_size, 'threads': threads, 'torch_version': torch.__version__,
          'final_loss': final_loss}


def _random_batches(num: int, batch_size: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
  """Random batches following the batch contract (for the self-check only)."""
  rng = np.random.default_rng(seed)
  return [{'image': rng.integers(0, 256, (batch_size, 28, 28, 1), dtype=np.uint8),
           'audio': rng.uniform(-0.5, 0.5, (batch_size, 8000)).astype(np.float32),
           'label': rng.integers(0, 10, batch_size, dtype=np.int32)} for _ in range(num)]


def main() -> None:
  ours, theirs = jax_count_params(), count_params()
  print(f'parameters: crossmodal {ours:,}  torch {theirs:,}  equal={ours == theirs}')
  rng = np.random.default_rng(1)
  waveform = (rng.standard_normal((8, 8000)) * 0.1).astype(np.float32)
  waveform[0, :4000] = 0.0  # exact silence exercises the amin / top_db floor
  print(f'featurization max |torch - jax| log-mel: {featurization_max_abs_diff(waveform):.2e} dB')
  batches = _random_batches(2, 8)
  print(f'logits max |torch - jax|, same weights: {logits_max_abs_diff(batches[0]):.2e}')
  # One thread: on a shared 2-core CPU, 2 OpenMP threads stall whenever another job runs.
  result = train_throughput(batches, steps=5, threads=1, warmup=1, repeats=1)
  print(f'torch {result["torch_version"]}, batch {result["batch_size"]}, '
        f'threads={result["threads"]}: {result["examples_per_sec_median"]:.1f} examples/s '
        f'(loss {result["final_loss"]:.3f})')
  if ours != theirs:
    raise SystemExit('parameter counts differ')


if __name__ == '__main__':
  main()
