r"""Your own paired data: train on a manifest (CSV or JSON lines) of image, audio and text rows.

  python -m crossmodal.main --config=experiments/manifest.py:path=/data/pairs.csv --workdir=runs/mine

The manifest's columns (crossmodal/data/manifest.py, docs/data.md): image and audio (paths,
relative to the manifest or absolute), text, label (a class name, or an index into `classes`),
group (never split across train/validation/test), split (train/validation/test; without it the
rows are split 80/10/10 by group, seeded). The first run prepares the dataset once into
~/tensorflow_datasets/manifest/<name>_<digest>/ (a new digest when the manifest or a storage
option changes) and records its content fingerprint in run_info.json.

Presets (after ':', comma-separated):
  path=<manifest>         your manifest; the default is experiments/manifests/emoji_sample.csv,
                          120 emoji (image, lower-case name, category) from ../shared/data
  modalities=image+text   the columns to use (default: every modality column of the manifest)
  missing_ok=audio        modalities a row may leave empty (its `present` flag is then False:
                          the fusion never sees it, contrastive terms skip the row)
  task=classification | contrastive | both   what is trained: the fused classifier (needs a
                          label column), cross-modal contrastive alignment of `pair` (InfoNCE,
                          learned temperature; the retrieval evaluator), or both summed
  pair=image+text         the contrastive pair (default: the first two modalities)
  fusion=<type>           any fusion in crossmodal/models/fusion.py (default concat)
  image_size=64           images are centre-cropped and area-resized to this square
  channels=3              3 (RGB) or 1 (grey)
  sample_rate=16000       audio is mixed to mono, resampled (librosa) and cut or padded to
  clip_seconds=1.0        this length
  text_length=64          byte tokens per caption (with BOS/EOS); lowercase=true folds case
  classes=<file>          class names, one per line (relative to the manifest); default: the
                          train split's labels, sorted
  on_error=raise | skip   bad rows stop the build (with line, column and value) or are left out
                          and counted in the dataset info
  steps=1000, batch=64    training steps and global batch size
  recipe=emoji | avmnist  everything but the data from experiments/emoji.py or avmnist.py
                          (their model, optimiser, schedule and evaluators): the manifests that
                          scripts/make_manifest.py writes for those sources then train exactly
                          as the built-in datasets do (docs/data.md, "Manifests of the built-in
                          sources"); the data options default to the recipe's
  evals=<a>+<b>           more evaluators (crossmodal/evaluators/), e.g. robustness

Expected results: whatever your data gives. The manifests scripts/make_manifest.py writes for
the emoji and AV-MNIST (clean) sources give the built-in datasets' examples byte for byte, and
with recipe=emoji|avmnist train exactly as experiments/emoji.py and avmnist.py
(tests/test_manifest.py). A contrastive run ranks your collection: scripts/search.py.
"""
import os

import ml_collections

from crossmodal import config_utils
from crossmodal import evaluators as evaluators_lib
from crossmodal import objectives
from crossmodal import optim
from crossmodal.models import fusion as fusion_lib
from crossmodal.models import model as model_lib

TASKS = ('classification', 'contrastive', 'both')
RECIPES = ('', 'emoji', 'avmnist')
_HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE = os.path.join(_HERE, 'manifests', 'emoji_sample.csv')
# The data options each recipe's built-in dataset implies (what make_manifest.py writes).
RECIPE_DATA = {
    'emoji': dict(image_size=32, channels=3, text_length=40, lowercase=True),
    'avmnist': dict(image_size=28, channels=1, sample_rate=8000, clip_seconds=1.0),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = config_utils.parse_arg(arg, path=SAMPLE, modalities=(), missing_ok=(), task='classification',
                             pair=(), fusion='concat', image_size=64, channels=3,
                             sample_rate=16000, clip_seconds=1.0, text_length=64,
                             lowercase=False, classes='', on_error='raise', steps=1000,
                             batch=64, recipe='', evals=())
  _check('task', a.task, TASKS)
  _check('recipe', a.recipe, RECIPES)
  _check('fusion', a.fusion, tuple(fusion_lib.FUSIONS))
  for name in a.evals:
    _check('evals', name, tuple(evaluators_lib.REGISTRY))
  given = set(k.split('=')[0].strip() for k in (arg or '').split(',') if '=' in k)
  for key, value in RECIPE_DATA.get(a.recipe, {}).items():
    if key not in given:
      a[key] = value

  data = ml_collections.ConfigDict(dict(
      name='manifest', path=a.path, modalities=a.modalities, missing_ok=a.missing_ok,
      image_size=a.image_size, image_channels=a.channels, sample_rate=a.sample_rate,
      clip_seconds=a.clip_seconds, text_length=a.text_length, lowercase=a.lowercase,
      classes=a.classes, on_error=a.on_error,
      data_dir=ml_collections.FieldReference(None, field_type=str),  # None: ~/tensorflow_datasets
      global_batch_size=a.batch, eval_batch_size=256, worker_count=0, cache=True))
  modalities = a.modalities or _manifest_modalities(a.path)

  if a.recipe:
    recipe = config_utils.load_module(os.path.join(_HERE, f'{a.recipe}.py'),
                                      f'_manifest_recipe_{a.recipe}')
    config = recipe.get_config(f'fusion={a.fusion},modalities={"+".join(modalities)}')
    data.global_batch_size = config.data.global_batch_size
    data.eval_batch_size = config.data.eval_batch_size
    config.data = data
    if a.steps != 1000:
      config.train.num_steps = a.steps
    for name in a.evals:
      config.evaluators[name] = evaluators_lib.evaluator_config(name)
    return config

  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = data
  config.model = model_lib.default_model_config(
      modalities=modalities, fusion=a.fusion, dim=64, encoders={'image': 'cnn'})
  if 'image' in modalities:  # a small ResNet; for 64x64 input an 8x8 map after three stages
    config.model.encoders.image.update(widths=(16, 32, 64), pixel_mean=(0.5,), pixel_std=(0.5,))
  if 'audio' in modalities:  # log-mel at this rate: 32 ms windows, 10 ms hop
    n_fft = 1 << max(6, round(0.032 * a.sample_rate - 1).bit_length())
    config.model.encoders.audio.features.update(
        sample_rate=a.sample_rate, n_fft=n_fft, win_length=n_fft,
        hop_length=max(1, a.sample_rate // 100))
  if 'text' in modalities:
    config.model.encoders.text.update(max_len=a.text_length, depth=2, num_heads=4)

  pair = tuple(a.pair) or tuple(modalities[:2])
  if a.task == 'classification':
    config.objectives = objectives.objectives_config()
  else:
    config.objectives = objectives.objectives_config(
        classification=1.0 if a.task == 'both' else 0.0, contrastive=1.0)
    config.objectives.contrastive.pair = pair
  config.optim = optim.optim_config(lr=1e-3, warmup_steps=100, weight_decay=1e-4)
  config.train = config_utils.train_config(
      num_steps=a.steps, log_every=50, checkpoint_every=max(1, min(500, a.steps // 4)))
  config.evaluators = evaluators_lib.classification_config(every=max(1, min(500, a.steps // 4)))
  if a.task != 'classification':
    config.evaluators.retrieval = evaluators_lib.evaluator_config('retrieval', pair=pair)
    if a.task == 'contrastive':
      config.train.best_metric = 'validation/loss'
  for name in a.evals:
    config.evaluators[name] = evaluators_lib.evaluator_config(name)
  return config


def _manifest_modalities(path: str) -> tuple[str, ...]:
  """The modality columns of the manifest (its header), so the model can be configured."""
  if not path:
    raise config_utils.ConfigError('manifest.py: path=<your manifest .csv or .jsonl> is required, '
                                   'e.g. --config=experiments/manifest.py:path=/data/pairs.csv')
  from crossmodal.data import manifest  # pylint: disable=import-outside-toplevel
  try:
    return manifest.manifest_config(path).modalities
  except manifest.ManifestError as e:
    raise config_utils.ConfigError(f'manifest.py: {e}') from None


def _check(key: str, value, choices: tuple) -> None:
  if value not in choices:
    raise config_utils.ConfigError(f'manifest.py: {key}={value!r}; valid choices: {choices}')
