r"""AV-MNIST (MNIST digits paired with spoken digits from FSDD): image, audio and their fusion.

Run (CPU; the first run builds the dataset from ../shared/data into ~/tensorflow_datasets):

  python -m crossmodal.main --config=experiments/avmnist.py --workdir=runs/avmnist

Presets (after ':', comma-separated), e.g. --config=experiments/avmnist.py:fusion=crossattn:
  fusion=<type>        any fusion in crossmodal/models/fusion.py (default concat)
  task=digit|grid2|grid3|match|seq2|seq3   digit: AV-MNIST; the others need the two
                       modalities bound part to part (crossmodal/data/avmnist_tasks.py,
                       experiments/avmnist_grid.py)
  modalities=image+audio | image | audio   (single-modality baselines)
  image=lenet|cnn|vit, audio=lenet|ast     encoders (MultiBench LeNets by default)
  variant=pca<k>|pca|clean  image variant: MNIST rebuilt from k principal components (default
                       VARIANT below), from those holding 25% of the energy (pca), or as is
  snr=<dB>|clean       white noise added to the audio at this SNR (default SNR_DB below)
  subset=<n>           use only the first n examples of each split (0 = all; for quick checks)
  steps=<n>            training steps (default 2000, about 2.3 epochs of batch 64)
  evals=<a>+<b>        evaluators run on the best checkpoint after training and by --mode=eval
                       (crossmodal/evaluators/), e.g. robustness, retrieval, attention (on a
                       grid task with crossattn or joint it also scores the attention's
                       cell_mass, and runs on validation every 500 steps too: attention_val)
  probes=true          also a linear probe (ridge, fitted on train, tested on test) of each
                       modality's pooled encoder output: evaluators probe_image, probe_audio
  trunk=auto|full|to_token_stage   which LeNet stages run (encoders.lenet_trunk): auto (the
                       default) runs every stage for pooled fusions and stops attention fusions
                       at their token stage (below); full gives attention fusions every stage
                       (the pooled final map joins their tokens); to_token_stage stops every
                       fusion at that stage. full/to_token_stage compare fusions on one trunk
  encoders_from=<dir>  start every encoder from that run's best checkpoint (e.g. a contrastive
                       run of avmnist_retrieval.py); locked=true then freezes them (LiT), and
                       without encoders_from locks them at their random initialisation
Any field can still be overridden, e.g. --config.optim.lr=3e-4 --config.data.data_dir=/data/tfds.

The default recipe is `pca5_snr-11`: MNIST images rebuilt from 5 principal components and
spoken digits with white noise at -11 dB, calibrated (experiments/sweeps/calibration.py) so that
each modality alone sits near the original AV-MNIST papers' image ~74.5% / audio ~66%.

Expected results (test accuracy at the best validation checkpoint, seed 0, 2000 steps; about
10 min for the fused model on a 2-core CPU; docs/results.md):
  image+audio (concat) 91.69%   modalities=image 77.01%   modalities=audio 66.95%
The same seed on another CPU ends a few tenths apart (the computation, not the data, depends on
the host: README): image+audio gives 91.23% on the 2-core AMD EPYC the tests run on.
"""
import ml_collections

from crossmodal import config_utils
from crossmodal import evaluators as evaluators_lib
from crossmodal import objectives
from crossmodal import optim
from crossmodal import transfer
from crossmodal.data import avmnist as avmnist_data
from crossmodal.data import avmnist_tasks
from crossmodal.models import encoders as encoders_lib
from crossmodal.models import fusion as fusion_lib
from crossmodal.models import model as model_lib

VARIANT = 'pca5'  # calibrated: image-only 77.0% test, papers ~74.5% (docs/results.md)
SNR_DB = '-11'  # calibrated: audio-only 67.0% test, papers ~66% (docs/results.md)
# Fusions that attend over tokens. The LeNets' final maps are 1x1 (one token), so for these the
# tokens come from an earlier stage: image 3x3x24 (9 tokens), audio 6x4x48 (24 tokens).
TOKEN_FUSIONS = ('crossattn', 'joint', 'bottleneck')
LENET_TOKEN_STAGES = {'image': 2, 'audio': 3}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = config_utils.parse_arg(arg, fusion='concat', task=avmnist_tasks.DIGIT,
                             modalities=('image', 'audio'), image='lenet',
                             audio='lenet', variant=VARIANT, snr=SNR_DB, subset=0, steps=2000,
                             evals=(), probes=False, encoders_from='', locked=False,
                             trunk='auto')
  _check('fusion', a.fusion, tuple(fusion_lib.FUSIONS))
  _check('task', a.task, avmnist_tasks.TASKS)
  _check('trunk', a.trunk, encoders_lib.TRUNKS)
  _check('image', a.image, tuple(encoders_lib.ENCODERS['image']))
  _check('audio', a.audio, tuple(encoders_lib.ENCODERS['audio']))
  try:
    avmnist_data.avmnist_config(image=a.variant)
  except ValueError:
    raise config_utils.ConfigError(
        f'avmnist.py: variant={a.variant!r}; valid choices: {avmnist_data.IMAGE_CHOICES}') from None
  for m in a.modalities:
    _check('modalities', m, ('image', 'audio'))
  for name in a.evals:
    _check('evals', name, tuple(evaluators_lib.REGISTRY))
  if a.snr != 'clean':
    try:
      float(a.snr)
    except ValueError:
      raise config_utils.ConfigError(
          f"avmnist.py: snr={a.snr!r}; valid choices: 'clean' or a number of dB") from None
  if a.subset < 0 or a.steps < 1:
    raise config_utils.ConfigError(f'avmnist.py: subset={a.subset} must be >= 0 and '
                                   f'steps={a.steps} >= 1')

  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = ml_collections.ConfigDict(dict(
      name='avmnist',
      # TFDS builder config: the variant, plus '_n<k>' for a prefix subset of every split.
      builder_config=avmnist_data.config_name(
          task=a.task, image=a.variant, audio_snr_db=None if a.snr == 'clean' else a.snr,
          max_examples_per_split=a.subset or None),
      data_dir=ml_collections.FieldReference(None, field_type=str),  # None: ~/tensorflow_datasets
      manual_dir=ml_collections.FieldReference(None, field_type=str),  # None: ../shared/data
      global_batch_size=64, eval_batch_size=256, worker_count=0,
      cache=True))  # keep decoded examples in memory (~1.2 GB): decoding competes with training

  config.model = model_lib.default_model_config(
      modalities=a.modalities, fusion=a.fusion, dim=64,
      encoders={'image': a.image, 'audio': a.audio})
  for m, stage in LENET_TOKEN_STAGES.items():
    if m in a.modalities and getattr(a, m) == 'lenet':
      # attend over feature-map positions, not one pooled token; or cut the trunk there
      if a.fusion in TOKEN_FUSIONS or a.trunk == 'to_token_stage':
        config.model.encoders[m].token_stage = stage
      config.model.encoders[m].trunk = a.trunk

  config.objectives = objectives.objectives_config()  # classification only
  config.optim = optim.optim_config(lr=1e-3, warmup_steps=100, weight_decay=1e-4)
  config.train = config_utils.train_config(
      num_steps=a.steps, log_every=50, checkpoint_every=500)
  config.evaluators = evaluators_lib.classification_config(every=500)  # validation, test
  for name in a.evals:
    config.evaluators[name] = evaluators_lib.evaluator_config(name)
  if 'attention' in a.evals and a.task.startswith('grid') and a.fusion in ('crossattn', 'joint'):
    grid = int(a.task[4:])  # where the audio attends: cell_mass, after training and over it
    config.evaluators.attention.grid = grid
    config.evaluators.attention_val = evaluators_lib.evaluator_config(
        'attention', split='validation', every=500, grid=grid)
  if a.probes:
    for m in a.modalities:
      config.evaluators[f'probe_{m}'] = evaluators_lib.evaluator_config('linear_probe', source=m)
  if a.encoders_from:
    config.init_from = ml_collections.ConfigDict({
        f'{m}_tower': transfer.init_from_config(a.encoders_from, 'best', source=f'{m}_encoder')
        for m in a.modalities})
  if a.locked:
    config.train.frozen = tuple(f'{m}_encoder/.*' for m in a.modalities)
  return config


def _check(key: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise config_utils.ConfigError(f'avmnist.py: {key}={value!r}; valid choices: {choices}')
