r"""Independent PyTorch implementations of two AV-MNIST models, for the benchmark.

Issue 6 asks how crossmodal's training throughput compares with what a researcher would
otherwise write: eager PyTorch in the style of MultiBench, for the default model and for the
cross-attention fusion model. This module is that baseline, written against the same
definitions as `experiments/avmnist.py`, so that scripts/benchmark.py can train both frameworks
on the same batches. Both models share the MultiBench LeNets:

  image: uint8 [B,28,28,1] -> /255 -> LeNet(1, 6, 3): 4 stages, final map 1x1x48
  audio: float32 waveform [B,8000] -> log-mel [B,1,101,64] (computed in the forward pass, as
         our model does on device) -> (x - spec_mean) / spec_std -> LeNet(1, 6, 5): 6 stages,
         final map 1x1x192

concat (the default; AVMnistConcatTorch):
  each final map -> Linear 'pool_proj' -> 64; concat [B,128] -> Linear 100 -> ReLU ->
  Linear 10 (no dropout: model.dropout = 0)

crossattn (`experiments/avmnist.py:fusion=crossattn`, MulT-style; AVMnistCrossAttnTorch):
  tokens: image stage-2 map 3x3x24 -> 9 tokens, audio stage-3 map 6x4x48 -> 24 tokens
          (row-major over h, w, as the JAX NHWC reshape), each -> Linear 'token_proj' -> 64,
          + learned position and modality embeddings
  both modalities are targets: [class token; own tokens] goes through
    2 cross layers: keys/values are the other modality's embedded tokens (the same at every
      layer), z = [MHA(LN(s), LN(c)); s] W_O (4 heads, per-head outputs straight into W_O,
      no residual), then z + MLP(LN(z)) (GELU, tanh form, 4x)
    1 pre-LN self-attention layer (residual), final LayerNorm, the class token
  head: [cls_image; cls_audio] [B,128] -> Linear 100 -> ReLU -> Linear 10
  dropout 0.1 on attention weights, attention outputs and MLPs (training only)
  Each LeNet stops at its token stage and has no 'pool_proj', as the JAX encoders under an
  attention fusion (nothing would read the later stages).

`Trainer` runs either model in any of VARIANTS: eager or `torch.compile`d (inductor; the
forward pass and the loss, so AOTAutograd compiles the backward too), in NCHW or channels_last
memory format, with SGD + momentum `fused=True` where the device supports it (CPU and CUDA in
torch 2.13), else `foreach=True` (the trainer says which it got). MultiBench itself is eager
NCHW with the per-parameter loop. Only constants come from crossmodal (the mel filterbank, the window, the feature options, the
spectrogram statistics and the crossattn config's sizes), so both models see identical inputs;
the arithmetic is torch's. A config switch this module does not implement is an error.

  python scripts/torch_reference.py   # param counts, featurization and logits diffs

Needs `pip install torch==2.13.0` (the optional `bench` extra).
"""
from __future__ import annotations

import math
import pathlib
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

AUDIO_SAMPLES = 8000  # the batch contract: 1 s at 8 kHz
# The crossattn switches this module implements (fusion.CrossAttentionFusion's defaults).
CROSSATTN_SWITCHES = {'direction': 'both', 'kv_source': 'first_layer', 'combine': 'concat_proj',
                      'modality_embeddings': True, 'positional_embeddings': True,
                      'pooling': 'cls'}


def _init_like_flax(module: nn.Module) -> None:
  """Initialises as our Flax model does, so both start from the same distribution:
  convs kaiming-uniform (encoders._conv_init), Linear lecun-normal (truncated, Flax's
  nn.Dense default) with zero bias; BatchNorm and LayerNorm scale 1, bias 0 (both
  frameworks' default). Embeddings are initialised where they are created."""
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
  final map is flattened and projected to `dim` (our 'pool_proj'). With `token_stage` set,
  the trunk ends at that stage and `tokens` gives its map positions projected to `dim`
  ('token_proj') instead.

  BatchNorm momentum 0.1 is Flax's momentum 0.9 in the other convention; eps 1e-5 both.
  Unavoidable difference: torch's running variance uses the unbiased batch variance, Flax's
  the biased one (a factor n/(n-1)); it affects only evaluation, never the training step.
  """

  def __init__(self, base_channels: int, extra_layers: int, final_hw: tuple[int, int],
               dim: int, token_stage: int | None = None):
    super().__init__()
    if token_stage is not None:
      if not -extra_layers - 1 <= token_stage <= extra_layers:
        raise ValueError(f'LeNet: token_stage={token_stage} not in '
                         f'{-extra_layers - 1}..{extra_layers}')
      token_stage %= extra_layers + 1  # -1: the final map, as in the JAX encoders
    layers, c_in = [], 1
    # With tokens (attention fusions) the trunk stops at the token stage and has no pooled
    # projection, as the JAX encoders built with_pooled=False.
    for i in range(extra_layers + 1 if token_stage is None else token_stage + 1):
      c_out = base_channels * 2**i
      k = 5 if i == 0 else 3
      layers += [nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False),  # 'SAME' for odd k
                 nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.1), nn.ReLU(), nn.MaxPool2d(2)]
      c_in = c_out
    self.trunk = nn.Sequential(*layers)
    if token_stage is None:
      self.pool_proj = nn.Linear(c_in * final_hw[0] * final_hw[1], dim)
    else:
      self.token_proj = nn.Linear(c_in, dim)
    self.token_stage = token_stage

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.pool_proj(self.trunk(x).flatten(1))

  def tokens(self, x: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] -> [B, h*w, dim] from the token stage (the end of this trunk)."""
    token_map = self.trunk(x)
    # NCHW -> NHWC before flattening: tokens in the JAX order (row-major over h, w).
    return self.token_proj(token_map.permute(0, 2, 3, 1).flatten(1, 2))


def _image_input(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
  """encoders._image_to_float: uint8 [B,H,W,1] -> [0, 1] -> (x - mean) / std, NCHW shape in
  the model's memory format."""
  x = (image.permute(0, 3, 1, 2).float() / 255.0 - model.image_mean) / model.image_std
  return x.contiguous(memory_format=model.memory_format)


def _audio_input(model: nn.Module, audio: torch.Tensor) -> torch.Tensor:
  """encoders._spectrogram: [B, frames, n_mels] standardised, as a 1-channel image."""
  x = ((model.log_mel(audio) - model.spec_mean) / model.spec_std).unsqueeze(1)
  return x.contiguous(memory_format=model.memory_format)


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
    self.memory_format = torch.contiguous_format  # of the conv inputs (Trainer may change it)
    self.image = LeNet(6, 3, (1, 1), dim)  # 28x28 -> 14 -> 7 -> 3 -> 1
    self.audio = LeNet(int(a.base_channels), int(a.extra_layers), (1, 1), dim)  # 101x64 -> 1x1
    self.hidden = nn.Linear(2 * dim, hidden)
    self.logits = nn.Linear(hidden, num_classes)
    _init_like_flax(self)

  def forward(self, image: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
    fused = torch.cat([self.image(_image_input(self, image)),
                       self.audio(_audio_input(self, audio))], dim=1)
    return self.logits(F.relu(self.hidden(fused)))


class MultiHeadAttention(nn.Module):
  """attention.MultiHeadAttention with every token valid (AV-MNIST has no padding and the
  benchmark no missing modality). `out=False`: the per-head outputs, concatenated head-major
  as the JAX reshape, are returned unprojected (the cross layer's W_O takes them)."""

  def __init__(self, dim: int, num_heads: int, dropout: float, out: bool):
    super().__init__()
    self.num_heads, self.dropout = num_heads, dropout
    self.query, self.key, self.value = (nn.Linear(dim, dim) for _ in range(3))
    self.out = nn.Linear(dim, dim) if out else None

  def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    b, n, d = x.shape

    def heads(t: torch.Tensor) -> torch.Tensor:  # [B, N, D] -> [B, heads, N, D / heads]
      return t.unflatten(-1, (self.num_heads, d // self.num_heads)).transpose(1, 2)

    # Softmax(q k^T / sqrt(head_dim)) v with dropout on the weights, as the JAX code.
    y = F.scaled_dot_product_attention(heads(self.query(x)), heads(self.key(context)),
                                       heads(self.value(context)),
                                       dropout_p=self.dropout if self.training else 0.0)
    y = y.transpose(1, 2).reshape(b, n, d)
    return self.out(y) if self.out is not None else y


class TransformerLayer(nn.Module):
  """attention.TransformerLayer (pre-LN) with one context or none. Cross (combine
  'concat_proj'): z = [h; s] W_O with h = MHA(LN_q(s), LN_kv(c)), no residual. Self
  (combine 'residual'): z = s + MHA(LN_q(s), LN_q(s)). Then z + MLP(LN(z)).
  LayerNorm eps 1e-6 and tanh-GELU are Flax's defaults (torch's are 1e-5 and exact GELU)."""

  def __init__(self, dim: int, num_heads: int, mlp_ratio: int, dropout: float, cross: bool):
    super().__init__()
    self.norm_q = nn.LayerNorm(dim, eps=1e-6)
    if cross:
      self.norm_kv_0 = nn.LayerNorm(dim, eps=1e-6)
      self.out_proj = nn.Linear(2 * dim, dim)
    self.cross = cross
    self.attention_0 = MultiHeadAttention(dim, num_heads, dropout, out=not cross)
    self.norm_mlp = nn.LayerNorm(dim, eps=1e-6)
    self.mlp_in = nn.Linear(dim, mlp_ratio * dim)
    self.mlp_out = nn.Linear(mlp_ratio * dim, dim)
    self.drop = nn.Dropout(dropout)

  def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
    y = self.norm_q(x)
    if self.cross:
      h = self.drop(self.attention_0(y, self.norm_kv_0(context)))
      x = self.out_proj(torch.cat([h, x], dim=-1))
    else:
      x = x + self.drop(self.attention_0(y, y))
    z = self.drop(F.gelu(self.mlp_in(self.norm_mlp(x)), approximate='tanh'))
    return x + self.drop(self.mlp_out(z))


class MLPHead(nn.Module):
  """heads.MLPHead with one hidden layer and no dropout (model.dropout = 0)."""

  def __init__(self, d_in: int, hidden: int, num_classes: int):
    super().__init__()
    self.hidden_0 = nn.Linear(d_in, hidden)
    self.logits = nn.Linear(hidden, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.logits(F.relu(self.hidden_0(x)))


class CrossAttentionFusion(nn.Module):
  """fusion.CrossAttentionFusion with the switches in CROSSATTN_SWITCHES. Submodule and
  parameter names are the Flax ones (load_jax_params relies on it).

  forward({modality: tokens [B, N_m, D]}) -> logits; modalities in the JAX order.
  """

  def __init__(self, token_counts: Mapping[str, int], dim: int, num_classes: int,
               hidden: int, num_layers: int, num_heads: int, self_attention_layers: int,
               mlp_ratio: int, dropout: float):
    super().__init__()
    if len(token_counts) != 2:
      raise ValueError(f'CrossAttentionFusion: implemented for 2 modalities, got '
                       f'{list(token_counts)}')
    self.modalities = tuple(token_counts)
    self.num_layers, self.self_attention_layers = num_layers, self_attention_layers

    def embedding(*shape: int) -> nn.Parameter:
      return nn.Parameter(torch.randn(*shape) * 0.02)  # fusion._embed_init

    for m, n in token_counts.items():
      self.register_parameter(f'pos_embedding_{m}', embedding(n, dim))
      self.register_parameter(f'modality_embedding_{m}', embedding(dim))
      self.register_parameter(f'cls_{m}', embedding(dim))
      for layer in range(num_layers):
        self.add_module(f'cross_{layer}_{m}',
                        TransformerLayer(dim, num_heads, mlp_ratio, dropout, cross=True))
      for j in range(self_attention_layers):
        self.add_module(f'self_{j}_{m}',
                        TransformerLayer(dim, num_heads, mlp_ratio, dropout, cross=False))
      self.add_module(f'norm_{m}', nn.LayerNorm(dim, eps=1e-6))
    self.head = MLPHead(len(token_counts) * dim, hidden, num_classes)

  def forward(self, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
    a, b = self.modalities
    source = {a: b, b: a}
    embedded = {m: tokens[m] + getattr(self, f'pos_embedding_{m}')
                + getattr(self, f'modality_embedding_{m}') for m in self.modalities}
    states = {m: torch.cat([getattr(self, f'cls_{m}').expand(x.shape[0], 1, -1), x], dim=1)
              for m, x in embedded.items()}
    for layer in range(self.num_layers):  # kv_source 'first_layer': the embedded tokens
      states = {m: getattr(self, f'cross_{layer}_{m}')(x, embedded[source[m]])
                for m, x in states.items()}
    pooled = []
    for m, x in states.items():
      for j in range(self.self_attention_layers):
        x = getattr(self, f'self_{j}_{m}')(x)
      pooled.append(getattr(self, f'norm_{m}')(x)[:, 0])  # the class token
    return self.head(torch.cat(pooled, dim=-1))


def _stage_hw(hw: tuple[int, int], stage: int) -> tuple[int, int]:
  """Map size after `stage + 1` 2x2 'VALID' max-pools (odd sizes round down)."""
  return hw[0] >> (stage + 1), hw[1] >> (stage + 1)


class AVMnistCrossAttnTorch(nn.Module):
  """experiments/avmnist.py:fusion=crossattn in PyTorch, NCHW (module docstring).

  forward(image uint8 [B,28,28,1], audio float32 [B,8000]) -> logits [B, num_classes].
  Defaults are the JAX config's; `from_config` reads them from a config.model.
  """

  def __init__(self, dim: int = 64, hidden: int = 100, num_classes: int = 10,
               image_token_stage: int = 2, audio_token_stage: int = 3, num_layers: int = 2,
               num_heads: int = 4, self_attention_layers: int = 1, mlp_ratio: int = 4,
               dropout: float = 0.1, image_mean: float = 0.0, image_std: float = 1.0):
    super().__init__()
    a = _AUDIO_DEFAULTS
    self.log_mel = LogMel(a.features)
    self.spec_mean, self.spec_std = float(a.spec_mean), float(a.spec_std)
    self.image_mean, self.image_std = image_mean, image_std
    self.memory_format = torch.contiguous_format
    self.image = LeNet(6, 3, (1, 1), dim, token_stage=image_token_stage)
    self.audio = LeNet(int(a.base_channels), int(a.extra_layers), (1, 1), dim,
                       token_stage=audio_token_stage)
    spec_hw = (1 + AUDIO_SAMPLES // self.log_mel.p.hop_length, self.log_mel.p.n_mels)
    counts = {'image': math.prod(_stage_hw((28, 28), self.image.token_stage)),  # 3x3
              'audio': math.prod(_stage_hw(spec_hw, self.audio.token_stage))}  # 6x4
    self.fusion = CrossAttentionFusion(counts, dim, num_classes, hidden, num_layers, num_heads,
                                       self_attention_layers, mlp_ratio, dropout)
    _init_like_flax(self)

  @classmethod
  def from_config(cls, model_config: Any, num_classes: int = 10) -> AVMnistCrossAttnTorch:
    """The model for a crossattn `config.model`; a switch not implemented here raises."""
    f, enc = model_config.fusion, model_config.encoders
    if f.type != 'crossattn':
      raise ValueError(f'AVMnistCrossAttnTorch: fusion type {f.type!r}, not crossattn')
    unsupported = {k: f[k] for k, v in CROSSATTN_SWITCHES.items() if f[k] != v}
    if tuple(model_config.modalities) != ('image', 'audio'):
      unsupported['modalities'] = tuple(model_config.modalities)
    for m in ('image', 'audio'):
      if m in enc and enc[m].type != 'lenet':
        unsupported[f'encoders.{m}.type'] = enc[m].type
    if len(model_config.head) != 1 or model_config.dropout:
      unsupported['head, dropout'] = (tuple(model_config.head), model_config.dropout)
    if unsupported:
      raise ValueError(f'AVMnistCrossAttnTorch implements crossattn with {CROSSATTN_SWITCHES}, '
                       f'image+audio LeNets and a 1-hidden-layer head; got {unsupported}')
    return cls(dim=int(model_config.dim), hidden=int(model_config.head[0]),
               num_classes=num_classes, image_token_stage=int(enc.image.token_stage),
               audio_token_stage=int(enc.audio.token_stage), num_layers=int(f.num_layers),
               num_heads=int(f.num_heads), self_attention_layers=int(f.self_attention_layers),
               mlp_ratio=int(f.mlp_ratio), dropout=float(f.dropout))

  def forward(self, image: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
    return self.fusion({'image': self.image.tokens(_image_input(self, image)),
                        'audio': self.audio.tokens(_audio_input(self, audio))})


FUSIONS = ('concat', 'crossattn')


def experiment_config(fusion: str = 'concat') -> Any:
  """experiments/avmnist.py:fusion=<fusion>, the config both frameworks' models come from."""
  if fusion not in FUSIONS:
    raise ValueError(f'torch_reference: fusion={fusion!r}; implemented: {FUSIONS}')
  from crossmodal import config_utils  # pylint: disable=import-outside-toplevel
  return config_utils.load_config_file(f'{REPO / "experiments/avmnist.py"}:fusion={fusion}')


def torch_model(fusion: str = 'concat', model_config: Any = None) -> nn.Module:
  """The torch twin of experiments/avmnist.py:fusion=<fusion>; for crossattn, of
  `model_config` if given (concat's torch model is fixed: it reads no config)."""
  if fusion == 'concat':
    return AVMnistConcatTorch()
  if model_config is None:
    model_config = experiment_config(fusion).model
  return AVMnistCrossAttnTorch.from_config(model_config)


def count_params(model: nn.Module | None = None, fusion: str = 'concat') -> int:
  """Trainable parameters of the torch model (BatchNorm running stats are buffers, as our
  `batch_stats` are not counted by crossmodal.models.model.count_params)."""
  model = model if model is not None else torch_model(fusion)
  return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _jax_model(model_config: Any):
  """Our Flax model exactly as experiments/avmnist.py builds it (float32 compute)."""
  from crossmodal.models import model as model_lib  # pylint: disable=import-outside-toplevel
  return model_lib.build_model(model_config, num_classes=10)


def jax_count_params(fusion: str = 'concat') -> int:
  """Parameter count of experiments/avmnist.py:fusion=<fusion> (abstract init)."""
  import jax  # pylint: disable=import-outside-toplevel
  from crossmodal.models import model as model_lib  # pylint: disable=import-outside-toplevel
  batch = {'image': jax.ShapeDtypeStruct((2, 28, 28, 1), np.uint8),
           'audio': jax.ShapeDtypeStruct((2, AUDIO_SAMPLES), np.float32)}
  model = _jax_model(experiment_config(fusion).model)
  return model_lib.count_params(jax.eval_shape(model.init, jax.random.PRNGKey(0), batch))


# ----------------------------------------------------------------------------- checks & timing


def featurization_max_abs_diff(waveform_np: np.ndarray) -> float:
  """max |torch LogMel - crossmodal.data.features.log_mel| in dB on a float32 batch [B, T]."""
  cfg = _AUDIO_DEFAULTS.features
  ours = np.asarray(features_lib.log_mel(np.asarray(waveform_np, np.float32), cfg))
  with torch.no_grad():
    theirs = LogMel(cfg)(torch.from_numpy(np.asarray(waveform_np, np.float32))).numpy()
  return float(np.max(np.abs(ours - theirs)))


def _copy(dst: torch.Tensor, src: Any, perm: tuple[int, ...] = ()) -> None:
  """dst <- src (transposed by `perm`); shapes must agree exactly (copy_ would broadcast)."""
  src = np.array(src, np.float32)  # a writable copy (jax arrays are read-only)
  src = np.ascontiguousarray(src.transpose(perm) if perm else src)
  if tuple(dst.shape) != src.shape:
    raise ValueError(f'load_jax_params: shape {src.shape} does not fit {tuple(dst.shape)}')
  dst.copy_(torch.from_numpy(src))


def _flat(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()):
  for key, value in tree.items():
    if isinstance(value, Mapping):
      yield from _flat(value, prefix + (key,))
    else:
      yield prefix + (key,), value


def _load_by_name(module: nn.Module, params: Mapping[str, Any]) -> None:
  """Copies a Flax subtree into a module whose names mirror it: 'kernel' and 'scale' become
  'weight'; kernels go to [out, in] with q/k/v (D, heads, head_dim) and out (heads, head_dim,
  D) flattened head-major; every torch parameter must be filled exactly once."""
  targets = dict(module.named_parameters())
  filled = set()
  for path, value in _flat(params):
    *owner, leaf = path
    value = np.asarray(value)
    if leaf == 'kernel':
      if owner[-1] in ('query', 'key', 'value'):
        value = value.reshape(value.shape[0], -1)
      value = value.reshape(-1, value.shape[-1]).T
    elif leaf == 'bias':
      value = value.reshape(-1)
    name = '.'.join(owner + [{'kernel': 'weight', 'scale': 'weight'}.get(leaf, leaf)])
    if name not in targets:
      raise ValueError(f'load_jax_params: {"/".join(path)} has no torch parameter {name!r}')
    _copy(targets[name], value)
    filled.add(name)
  if set(targets) != filled:
    raise ValueError(f'load_jax_params: torch parameters without a JAX value: '
                     f'{sorted(set(targets) - filled)}')


def load_jax_params(model: nn.Module, params: Mapping[str, Any],
                    batch_stats: Mapping[str, Any] | None = None) -> None:
  """Copies our Flax `params` (and BatchNorm `batch_stats`, if given) of the same model into
  `model` (AVMnistConcatTorch or AVMnistCrossAttnTorch), converting layouts (conv HWIO ->
  OIHW, Dense [in, out] -> [out, in])."""
  with torch.no_grad():
    for name, lenet in (('image_encoder', model.image), ('audio_encoder', model.audio)):
      p = params[name]
      convs = [m for m in lenet.trunk if isinstance(m, nn.Conv2d)]
      norms = [m for m in lenet.trunk if isinstance(m, nn.BatchNorm2d)]
      for i, (conv, norm) in enumerate(zip(convs, norms)):
        _copy(conv.weight, p[f'conv_{i}']['kernel'], (3, 2, 0, 1))
        _copy(norm.weight, p[f'norm_{i}']['scale'])
        _copy(norm.bias, p[f'norm_{i}']['bias'])
        if batch_stats is not None:
          _copy(norm.running_mean, batch_stats[name][f'norm_{i}']['mean'])
          _copy(norm.running_var, batch_stats[name][f'norm_{i}']['var'])
      projections = ('token_proj',) if lenet.token_stage is not None else ('pool_proj',)
      if set(p) - {f'conv_{i}' for i in range(len(convs))} - {
          f'norm_{i}' for i in range(len(norms))} != set(projections):
        raise ValueError(f'load_jax_params: {name} has {sorted(p)}; the torch LeNet has '
                         f'{len(convs)} stages and {projections}')
      for proj in projections:
        _copy(getattr(lenet, proj).weight, p[proj]['kernel'], (1, 0))
        _copy(getattr(lenet, proj).bias, p[proj]['bias'])
    if isinstance(model, AVMnistCrossAttnTorch):
      _load_by_name(model.fusion, params['fusion'])
    else:
      head = params['fusion']['head']
      for layer, key in ((model.hidden, 'hidden_0'), (model.logits, 'logits')):
        _copy(layer.weight, head[key]['kernel'], (1, 0))
        _copy(layer.bias, head[key]['bias'])


def logits_max_abs_diff(batch: Mapping[str, np.ndarray], seed: int = 0,
                        fusion: str = 'concat', train: bool = False) -> float:
  """max |torch logits - crossmodal logits| with the same weights on one batch: shows the
  two forward passes compute the same function.

  train=False: eval mode, BatchNorm with running statistics, taken from one JAX training
  pass over the batch (so they are not the trivial (0, 1) and their copying is tested too).
  train=True: training mode (batch statistics), with the fusion's dropout set to 0 on both
  sides, since the two frameworks' dropout masks cannot agree.
  """
  import jax  # pylint: disable=import-outside-toplevel
  config = experiment_config(fusion).model
  if train and 'dropout' in config.fusion:
    config.fusion.dropout = 0.0
  model = _jax_model(config)

  def forward(inputs):  # one jit: compiles in a third of the time eager op-by-op takes
    variables = model.init(jax.random.PRNGKey(seed), inputs)
    out, updates = model.apply(variables, inputs, train=True, mutable=['batch_stats'],
                               rngs={'dropout': jax.random.PRNGKey(seed + 1)})
    if not train:
      variables = {**variables, **updates}
      out = model.apply(variables, inputs, train=False)
    return variables, out['logits']

  variables, ours = jax.jit(forward)({'image': batch['image'], 'audio': batch['audio']})
  torch_model_ = torch_model(fusion, config).train(train)
  load_jax_params(torch_model_, variables['params'], variables['batch_stats'])
  image, audio, _ = _to_torch(batch)
  with torch.no_grad():
    theirs = torch_model_(image, audio).numpy()
  return float(np.max(np.abs(np.asarray(ours) - theirs)))


def _to_torch(batch: Mapping[str, np.ndarray], device: Any = 'cpu') -> tuple[torch.Tensor, ...]:
  return (torch.from_numpy(np.ascontiguousarray(batch['image'])).to(device),
          torch.from_numpy(np.ascontiguousarray(batch['audio'], dtype=np.float32)).to(device),
          torch.from_numpy(np.asarray(batch['label'], np.int64)).to(device))  # int64 for CE


# (compiled, channels_last) per variant: what "PyTorch at its best" may mean on a CPU or GPU.
VARIANTS = {'eager': (False, False), 'eager+channels_last': (False, True),
            'compile': (True, False), 'compile+channels_last': (True, True)}


def default_device() -> str:
  return 'cuda' if torch.cuda.is_available() else 'cpu'


def sgd(params: Sequence[torch.Tensor], lr: float, momentum: float
        ) -> tuple[torch.optim.Optimizer, str]:
  """SGD + momentum (torch's form equals optax.sgd's trace: buf = m * buf + g, p -= lr * buf),
  fused into one kernel where the device supports it, else the multi-tensor path; returns the
  optimizer and which implementation it is."""
  params = list(params)
  try:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, fused=True), 'SGD(fused=True)'
  except RuntimeError:  # fused kernels unsupported on this device
    return torch.optim.SGD(params, lr=lr, momentum=momentum, foreach=True), 'SGD(foreach=True)'


class Trainer:
  """One training step of the torch twin of experiments/avmnist.py:fusion=<fusion> in one
  variant: softmax cross-entropy (mean over the batch, as crossmodal.train) and SGD.

  variables: our Flax {'params', 'batch_stats'} to start from (load_jax_params), so the loss
  trajectory can be compared with the JAX model's; model_config: the crossattn config.model
  (e.g. with fusion.dropout = 0). torch.compile happens on the first step.
  """

  def __init__(self, fusion: str = 'concat', variant: str = 'eager', device: str | None = None,
               variables: Mapping[str, Any] | None = None, model_config: Any = None,
               lr: float = 0.01, momentum: float = 0.9, seed: int = 0):
    if variant not in VARIANTS:
      raise ValueError(f'Trainer: variant={variant!r}; valid: {tuple(VARIANTS)}')
    compiled, channels_last = VARIANTS[variant]
    self.device = torch.device(device or default_device())
    torch.manual_seed(seed)
    model = torch_model(fusion, model_config)
    if variables is not None:
      load_jax_params(model, variables['params'], variables.get('batch_stats'))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.memory_format = memory_format
    self.model = model.to(device=self.device, memory_format=memory_format).train()
    self.optimizer, optimizer_name = sgd(self.model.parameters(), lr, momentum)

    def loss_fn(image, audio, label):
      return F.cross_entropy(self.model(image, audio), label)
    self.loss_fn = torch.compile(loss_fn, dynamic=False) if compiled else loss_fn
    self.settings = {'variant': variant, 'device': str(self.device),
                     'optimizer': optimizer_name, 'torch_version': torch.__version__,
                     'threads': torch.get_num_threads(),
                     'interop_threads': torch.get_num_interop_threads()}

  def batch(self, batch: Mapping[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    """A numpy batch as device tensors (converted once, before timing)."""
    return _to_torch(batch, self.device)

  def step(self, image: torch.Tensor, audio: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """One SGD step; returns the loss (detached: reading it is the caller's sync point)."""
    self.optimizer.zero_grad(set_to_none=True)
    loss = self.loss_fn(image, audio, label)
    loss.backward()
    self.optimizer.step()
    return loss.detach()


def loss_trajectory(trainer: Trainer, batches: Sequence[Mapping[str, np.ndarray]],
                    steps: int) -> list[float]:
  """Losses of `steps` SGD steps cycling through `batches` in order."""
  data = [trainer.batch(b) for b in batches]
  losses = [trainer.step(*data[i % len(data)]) for i in range(steps)]
  return [float(l) for l in losses]


def _random_batches(num: int, batch_size: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
  """Random batches following the batch contract (for the self-check only)."""
  rng = np.random.default_rng(seed)
  return [{'image': rng.integers(0, 256, (batch_size, 28, 28, 1), dtype=np.uint8),
           'audio': rng.uniform(-0.5, 0.5, (batch_size, AUDIO_SAMPLES)).astype(np.float32),
           'label': rng.integers(0, 10, batch_size, dtype=np.int32)} for _ in range(num)]


def main() -> None:
  rng = np.random.default_rng(1)
  waveform = (rng.standard_normal((8, AUDIO_SAMPLES)) * 0.1).astype(np.float32)
  waveform[0, :4000] = 0.0  # exact silence exercises the amin / top_db floor
  print(f'featurization max |torch - jax| log-mel: {featurization_max_abs_diff(waveform):.2e} dB')
  batches = _random_batches(2, 8)
  unequal = []
  for fusion in FUSIONS:
    ours, theirs = jax_count_params(fusion), count_params(fusion=fusion)
    print(f'{fusion}: parameters crossmodal {ours:,}  torch {theirs:,}  equal={ours == theirs}')
    if ours != theirs:
      unequal.append(fusion)
    for train in (False, True):
      diff = logits_max_abs_diff(batches[0], fusion=fusion, train=train)
      print(f'{fusion}: logits max |torch - jax|, same weights, '
            f'{"train mode, no dropout" if train else "eval mode"}: {diff:.2e}')
  if unequal:
    raise SystemExit(f'parameter counts differ: {unequal}')


if __name__ == '__main__':
  main()
