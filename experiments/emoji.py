r"""Emoji (image + name): classify an emoji's category (10) or subcategory (99) from its picture,
its name, or both fused.

Run (CPU; the first run builds the dataset from ../shared/data/emoji into ~/tensorflow_datasets,
about 20 s):

  python -m crossmodal.main --config=experiments/emoji.py --workdir=runs/emoji

Presets (after ':', comma-separated), e.g. --config=experiments/emoji.py:label=subcategory:
  fusion=<type>         any fusion in crossmodal/models/fusion.py (default concat)
  modalities=image+text | image | text   (single-modality baselines)
  label=category|subcategory
  split=held_out_twitter | held_out_google | twitter_to_google | google_to_twitter
                        (crossmodal/data/emoji.py: held-out concepts, or train on one drawing
                        style and test on the other)
  text=name | name+short_names            what the caption holds
  image_size=32|64|16   images are 64x64; 32 (2x2 mean) keeps CPU runs short
  steps=<n>             training steps (default 400 at batch 64: about 19 epochs of the 1340
                        held-out training entries, 13 of the 1911 cross-style ones; both tasks
                        overfit these small sets, so the best validation checkpoint, evaluated
                        every 100 steps, is the one reported)
  evals=<a>+<b>         evaluators after training (crossmodal/evaluators/); zero_shot needs
                        the contrastive training of experiments/emoji_retrieval.py

The held-out split tests generalisation to unseen entries of seen subcategories; on the
cross-style splits the test names are the training names, so text alone identifies a test
entry and only the image side is being measured (docs/results.md).

Expected results (test accuracy at the best validation checkpoint, held_out_twitter, seeds
0-2, 1-3 min per run (attention fusions 6-9) with two runs at a time on this 2-core CPU;
docs/results.md has every fusion type, and the command `python scripts/ablate.py
--config=experiments/emoji.py --sweep=experiments/sweeps/emoji.py --seeds=3 --root=runs/emoji`):
  category:    image only 66.9%, name only 49.5%, image+name concat 61.1%, bottleneck 65.0%
               (majority class 20.1%); fusion raises macro-F1 (50.8% -> 54-62%), not accuracy
  subcategory: image only 40.5%, name only 31.2%, concat 40.0% (majority class 13.8%)
"""
import ml_collections

from crossmodal import config_utils
from crossmodal import evaluators as evaluators_lib
from crossmodal import objectives
from crossmodal import optim
from crossmodal.models import fusion as fusion_lib
from crossmodal.models import model as model_lib

SPLITS = ('held_out_twitter', 'held_out_google', 'twitter_to_google', 'google_to_twitter')
LABELS = ('category', 'subcategory')  # crossmodal/data/emoji.py
TEXTS = {'name': ('name',), 'name+short_names': ('name', 'short_names')}
# Byte tokens per caption (with BOS/EOS): 40 fits 98.2% of names whole; with short names 80.
TEXT_LENGTHS = {'name': 40, 'name+short_names': 80}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = config_utils.parse_arg(arg, fusion='concat', modalities=('image', 'text'),
                             label='category', split='held_out_twitter', text='name',
                             image_size=32, steps=400, evals=())
  _check('fusion', a.fusion, tuple(fusion_lib.FUSIONS))
  _check('label', a.label, LABELS)
  _check('split', a.split, SPLITS)
  _check('text', a.text, tuple(TEXTS))
  _check('image_size', a.image_size, (16, 32, 64))
  for m in a.modalities:
    _check('modalities', m, ('image', 'text'))
  for name in a.evals:
    _check('evals', name, tuple(evaluators_lib.REGISTRY))
  if a.steps < 1:
    raise config_utils.ConfigError(f'emoji.py: steps={a.steps} must be >= 1')

  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = ml_collections.ConfigDict(dict(
      name='emoji', builder_config=a.split,
      data_dir=ml_collections.FieldReference(None, field_type=str),  # None: ~/tensorflow_datasets
      manual_dir=ml_collections.FieldReference(None, field_type=str),  # None: ../shared/data
      label=a.label, text_fields=TEXTS[a.text], text_length=TEXT_LENGTHS[a.text],
      lowercase=True,
      image_size=a.image_size,
      global_batch_size=64, eval_batch_size=256, worker_count=0, cache=True))

  config.model = model_lib.default_model_config(
      modalities=a.modalities, fusion=a.fusion, dim=64, encoders={'image': 'cnn'})
  if 'image' in a.modalities:  # a small ResNet: 32x32 -> 8x8 feature map (64 tokens)
    config.model.encoders.image.update(widths=(16, 32, 64), pixel_mean=(0.5,), pixel_std=(0.5,))
  if 'text' in a.modalities:
    config.model.encoders.text.update(max_len=TEXT_LENGTHS[a.text], depth=2, num_heads=4)

  config.objectives = objectives.objectives_config()  # classification only
  config.optim = optim.optim_config(lr=1e-3, warmup_steps=100, weight_decay=1e-4)
  config.train = config_utils.train_config(
      num_steps=a.steps, log_every=50, checkpoint_every=100)
  config.evaluators = evaluators_lib.classification_config(every=100)  # validation, test
  pairs = {'retrieval': {'pair': ('text', 'image')}}  # the default pair is AV-MNIST's
  for name in a.evals:
    config.evaluators[name] = evaluators_lib.evaluator_config(name, **pairs.get(name, {}))
  return config


def _check(key: str, value, choices: tuple) -> None:
  if value not in choices:
    raise config_utils.ConfigError(f'emoji.py: {key}={value!r}; valid choices: {choices}')
