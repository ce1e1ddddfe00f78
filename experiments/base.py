r"""Research-scale towers: ViT-B/16 on 224x224 images, AST-B on 10 s of 16 kHz audio (128 mel
bands, 16x16 patches at stride 10 as in AST), a 12-layer byte-level text transformer, and
crossmodal attention fusion, at width 768 with 12 heads (the ViT-B of CLIP and MBT; one width
for every tower, as MBT's, where CLIP's text tower is 512 wide), on synthetic data of the
same shapes (crossmodal/data/synthetic.py). For memory, sharding and speed work: point
config.data at real data of these shapes to train for results.

  python -m crossmodal.main --config=experiments/base.py:size=small --workdir=runs/small

Presets (after ':', comma-separated):
  size=base | small | tiny   base: the sizes above, about 86M parameters per tower (images
                             are 1-channel here; RGB adds 0.4M to the patch embedding);
                             small: width 384, 6 heads, 12 layers, 112x112 images, 2 s clips,
                             32 text tokens (runs on a CPU); tiny: a few-second smoke run of
                             the same code (the tests)
  mesh=data:2,fsdp:4         config.train.mesh: shard parameters and optimizer state over
                             'fsdp' (parallel.py); default: data parallel on every device
  remat=none|full|dots|dots_no_batch, attention=einsum|dot_product   (models/attention.py)
  steps=<n>

Expected: no accuracy (the data is synthetic). Per-device memory under data parallel, fsdp
and fsdp+remat comes from XLA's memory analysis of the compiled step:
  python scripts/memory_report.py --config=experiments/base.py --devices=8 --batches=1,4,16
Parameters per part (size=base; params_by_part in a run's run_info.json): image 85.4M,
audio 86.2M, text 85.3M, fusion 82.7M.
"""
import ml_collections

from crossmodal import config_utils
from crossmodal import evaluators as evaluators_lib
from crossmodal import optim
from crossmodal.data import synthetic
from crossmodal.models import attention as attention_lib
from crossmodal.models import model as model_lib

# size: (width, heads, layers, image size, clip seconds, mel bands, text tokens, batch)
SIZES = {
    'base': (768, 12, 12, 224, 10.0, 128, 77, 256),
    'small': (384, 6, 12, 112, 2.0, 64, 32, 32),
    'tiny': (16, 2, 1, 32, 0.25, 16, 20, 8),
}
SAMPLE_RATE = 16000
TEST_ARG = 'size=tiny'  # what tests/test_experiments.py trains a few steps of


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = config_utils.parse_arg(arg, size='base', mesh='', remat='none', attention='einsum',
                             steps=0)
  for key, value, choices in (('size', a.size, tuple(SIZES)),
                              ('remat', a.remat, tuple(attention_lib.REMAT_POLICIES)),
                              ('attention', a.attention, attention_lib.ATTENTIONS)):
    if value not in choices:
      raise config_utils.ConfigError(f'base.py: {key}={value!r}; valid choices: {choices}')
  width, heads, layers, image, seconds, mels, text, batch = SIZES[a.size]
  tiny = a.size == 'tiny'

  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = ml_collections.ConfigDict(dict(
      name='synthetic', global_batch_size=batch, eval_batch_size=batch,
      synthetic=synthetic.synthetic_config(
          num_train=64 if tiny else 512, num_validation=16 if tiny else 128,
          num_test=16 if tiny else 128, image_size=image, sample_rate=SAMPLE_RATE,
          audio_length=int(seconds * SAMPLE_RATE), text_length=text)))

  model = model_lib.default_model_config(
      modalities=('image', 'audio', 'text'), fusion='crossattn', dim=width,
      encoders={'image': 'vit', 'audio': 'ast'}, head=())
  tower = dict(depth=layers, num_heads=heads, mlp_ratio=4)
  model.encoders.image.update(patch_size=8 if tiny else 16, **tower)
  model.encoders.audio.update(patch_size=(16, 16) if not tiny else (8, 8),
                              patch_stride=(10, 10) if not tiny else (8, 8), **tower)
  # AST's features: 25 ms windows every 10 ms (Kaldi fbank in the paper), `mels` bands.
  model.encoders.audio.features.update(sample_rate=SAMPLE_RATE, n_fft=400, win_length=400,
                                       hop_length=160, n_mels=mels, n_mfcc=min(20, mels))
  model.encoders.text.update(max_len=text, **tower)
  model.fusion.update(num_heads=heads, num_layers=1 if tiny else 2, dropout=0.0)
  model.update(remat=a.remat, attention=a.attention)
  config.model = model

  config.optim = optim.optim_config(lr=1e-4, warmup_steps=2 if tiny else 100,
                                    weight_decay=0.05, grad_clip=1.0)
  config.train = config_utils.train_config(
      num_steps=a.steps or (4 if tiny else 1000), log_every=2 if tiny else 50,
      checkpoint_every=0, mesh=a.mesh)
  config.evaluators = evaluators_lib.classification_config(every=2 if tiny else 500)
  return config
