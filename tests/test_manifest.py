"""The manifest dataset (crossmodal/data/manifest.py): your own image/audio/text rows.

Equivalence with the dedicated builders (scripts/make_manifest.py's manifests of the emoji and
AV-MNIST clean sources give the same examples; AV-MNIST trains bitwise the same), every kind of
bad input named with its line, a tri-modal manifest with missing modalities training under every
fusion type (and the missing inputs never reaching the output), and the content fingerprint.
"""
import csv
import io
import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
import soundfile as sf
from PIL import Image

from crossmodal import config_utils
from crossmodal import files
from crossmodal import train
from crossmodal.data import avmnist
from crossmodal.data import datasets
from crossmodal.data import emoji
from crossmodal.data import fingerprint
from crossmodal.data import input_pipeline
from crossmodal.data import manifest
from crossmodal.data import sources
from crossmodal.models import encoders as encoders_lib
from crossmodal.models import fusion as fusion_lib
from conftest import REPO, TINY_ENCODERS

sys.path.insert(0, os.path.join(REPO, 'scripts'))
import make_manifest  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

SR = 8000


def _need_sources():
  if sources.resolve_manual_dir() is None:
    pytest.fail(f'Data sources not found at {sources.default_shared_dir()}')


def write_csv(path, header, rows):
  with open(path, 'w', newline='', encoding='utf-8') as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)
  return path


def tone(path, seconds=0.5, rate=SR, channels=1, subtype='PCM_16', freq=440.0, fmt=None):
  t = np.arange(int(seconds * rate)) / rate
  x = 0.3 * np.sin(2 * np.pi * freq * t)
  x = np.stack([x] * channels, 1) if channels > 1 else x
  sf.write(path, x, rate, subtype=subtype, format=fmt)
  return path


def picture(path, seed, size=(20, 24), mode='RGB'):
  rng = np.random.default_rng(seed)
  shape = size[::-1] + ((3,) if mode == 'RGB' else (4,) if mode == 'RGBA' else ())
  Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)
  return path


def build(path, tmp_path, **options):
  cfg = manifest.manifest_config(path, **{'sample_rate': SR, 'image_size': 16, **options})
  return manifest.prepare(cfg, data_dir=str(tmp_path / 'tfds'), write_tfrecord=False)


# ----------------------------------------------------------------------------- equivalence


def test_emoji_manifest_gives_the_builders_examples(tmp_path):
  """make_manifest's emoji manifest: the same images, names and category labels, in order,
  stored (64x64) and as model examples (the recipe's 32x32 and lower-cased 40-byte text)."""
  _need_sources()
  path, classes = make_manifest.emoji_manifest(tmp_path / 'm', 'held_out_twitter')
  ours = build(path, tmp_path, image_size=64, classes=classes.name)
  theirs = emoji.prepare('held_out_twitter', data_dir=str(tmp_path / 'tfds'), write_tfrecord=False)
  for split in emoji.SPLITS:
    a, b = ours.as_data_source(split=split), theirs.as_data_source(split=split)
    assert len(a) == len(b) > 0
    for i in range(len(a)):
      assert np.array_equal(a[i]['image'], b[i]['image']), (split, i)
      assert a[i]['text'] == b[i]['name'] and a[i]['label'] == b[i]['category']
  recipe = config_utils.load_config_file(
      os.path.join(REPO, 'experiments', 'manifest.py') + f':path={path},classes={classes.name},recipe=emoji')
  builtin = config_utils.load_config_file(os.path.join(REPO, 'experiments', 'emoji.py'))
  for c in (recipe, builtin):
    c.data.data_dir = str(tmp_path / 'tfds')
  # The recipe's data (32x32 images) is prepared on its own: a second manifest build.
  x, y = datasets.get_source(recipe.data, 'test'), datasets.get_source(builtin.data, 'test')
  for i in (0, 1, len(x) - 1):
    for key in ('image', 'text', 'label'):
      assert np.array_equal(x[i][key], y[i][key]), (i, key)
    assert 'present' not in x[i]  # every row has every modality: no mask to carry
  assert recipe.model.to_dict() == builtin.model.to_dict()


def _metrics(workdir):
  return [{k: v for k, v in r.items() if k not in ('time', 'steps_per_sec', 'examples_per_sec',
                                                   'wall_time')}
          for r in files.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))]


@pytest.mark.slow
def test_avmnist_manifest_trains_bitwise_like_the_builder(tmp_path):
  """AV-MNIST clean (first 64 rows per split) as a manifest: the same examples as the builder's
  `clean_n64`, and avmnist.py's recipe on it logs the same losses and metrics, bit for bit."""
  _need_sources()
  path = make_manifest.avmnist_manifest(tmp_path / 'm', subset=64)
  data_dir = str(tmp_path / 'tfds')
  ours = build(path, tmp_path, image_size=28, image_channels=1)
  theirs = avmnist.prepare('clean_n64', data_dir=data_dir, write_tfrecord=False)
  for split in avmnist.SPLITS:
    a, b = ours.as_data_source(split=split), theirs.as_data_source(split=split)
    assert len(a) == len(b) == 64
    for i in range(64):
      for key in ('image', 'audio', 'audio_length', 'label'):
        assert np.array_equal(a[i][key], b[i][key]), (split, i, key)

  configs = {
      'builder': config_utils.load_config_file(
          os.path.join(REPO, 'experiments', 'avmnist.py') + ':variant=clean,snr=clean,subset=64'),
      'manifest': config_utils.load_config_file(
          os.path.join(REPO, 'experiments', 'manifest.py') + f':path={path},recipe=avmnist'),
  }
  for name, c in configs.items():
    c.data.data_dir = data_dir
    c.train.update(num_steps=3, log_every=1, checkpoint_every=0)
    c.data.global_batch_size = c.data.eval_batch_size = 16
    for e in c.evaluators.values():
      e.every = 3
    train.train_and_evaluate(c, str(tmp_path / name))
  builder, ours = _metrics(tmp_path / 'builder'), _metrics(tmp_path / 'manifest')
  assert len(builder) >= 5 and builder == ours
  info = json.loads((tmp_path / 'manifest' / 'run_info.json').read_text())
  assert info['data']['fingerprint'] == fingerprint.recorded(
      manifest.get_builder(datasets.manifest_config(configs['manifest'].data), data_dir=data_dir))


# ----------------------------------------------------------------------------- formats


def test_images_of_every_kind_become_the_configured_square(tmp_path):
  """PNG with alpha (composited on white), palette, grey and JPEG; centre crop, area resize."""
  rgba = np.zeros((32, 48, 4), np.uint8)
  rgba[..., 0], rgba[..., 3] = 200, 128  # half-transparent red
  Image.fromarray(rgba, 'RGBA').save(tmp_path / 'alpha.png')
  Image.fromarray(np.full((32, 32), 77, np.uint8), 'L').save(tmp_path / 'grey.png')
  Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).convert('P').save(tmp_path / 'palette.png')
  Image.fromarray(np.full((40, 40, 3), 150, np.uint8)).save(tmp_path / 'photo.jpg', quality=95)
  expected_alpha = np.rint(np.array([200, 0, 0]) * 128 / 255 + 255 * (1 - 128 / 255))
  out = manifest.read_image(tmp_path / 'alpha.png', 16, 3)
  assert out.shape == (16, 16, 3) and np.array_equal(out[0, 0], expected_alpha)
  assert np.all(manifest.read_image(tmp_path / 'grey.png', 8, 1) == 77)
  assert np.all(manifest.read_image(tmp_path / 'grey.png', 8, 3) == 77)
  assert manifest.read_image(tmp_path / 'palette.png', 32, 3).shape == (32, 32, 3)  # enlarged
  assert np.abs(manifest.read_image(tmp_path / 'photo.jpg', 16, 3).astype(int) - 150).max() <= 2
  # Centre crop of a 48-wide image: columns 8..40, then 2x2 block means.
  x = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
  Image.fromarray(x).save(tmp_path / 'wide.png')
  block = x[:, 8:40].reshape(16, 2, 16, 2, 3).mean((1, 3))
  assert np.array_equal(manifest.read_image(tmp_path / 'wide.png', 16, 3), np.rint(block))


def test_audio_of_any_rate_and_layout_is_resampled_mixed_and_fitted(tmp_path):
  """wav/flac/ogg, stereo, 22.05 kHz: mono mix, librosa's resampling, int16, cut/padded."""
  import librosa  # pylint: disable=import-outside-toplevel
  tone(tmp_path / 'a.wav', seconds=0.5)
  clip, n = manifest.read_audio(tmp_path / 'a.wav', sample_rate=SR, clip_samples=SR,
                                resample=True, mono=True)
  pcm, _ = sf.read(tmp_path / 'a.wav', dtype='int16')
  assert n == 4000 and np.array_equal(clip[:n], pcm) and not clip[n:].any()  # exact, padded
  tone(tmp_path / 'b.flac', seconds=1.5, rate=22050, channels=2, fmt='FLAC')
  clip, n = manifest.read_audio(tmp_path / 'b.flac', sample_rate=SR, clip_samples=SR,
                                resample=True, mono=True)
  x, _ = sf.read(tmp_path / 'b.flac', dtype='int16', always_2d=True)
  ref = librosa.resample((x / 32768.0).mean(1), orig_sr=22050, target_sr=SR)
  assert n == SR and np.abs(clip.astype(float) - np.rint(ref[:SR] * 32768)).max() <= 1
  tone(tmp_path / 'c.ogg', seconds=0.25, rate=SR, subtype='VORBIS', fmt='OGG')
  clip, n = manifest.read_audio(tmp_path / 'c.ogg', sample_rate=SR, clip_samples=SR,
                                resample=False, mono=True)
  assert n == 2000 and clip[:n].any()


def test_jsonl_and_csv_manifests_give_the_same_dataset(tmp_path):
  rows = [(f'{i}.png', f'caption {i}', 'ab'[i % 2]) for i in range(20)]
  for i in range(20):
    picture(tmp_path / f'{i}.png', i)
  write_csv(tmp_path / 'm.csv', ['image', 'text', 'label'], rows)
  with open(tmp_path / 'm.jsonl', 'w', encoding='utf-8') as f:
    for image, text, label in rows:
      f.write(json.dumps({'image': image, 'text': text, 'label': label}) + '\n')
  a, b = build(tmp_path / 'm.csv', tmp_path), build(tmp_path / 'm.jsonl', tmp_path)
  assert list(a.info.metadata['classes']) == list(b.info.metadata['classes']) == ['a', 'b']
  for split in manifest.SPLITS:
    x, y = a.as_data_source(split=split), b.as_data_source(split=split)
    assert len(x) == len(y) > 0
    for i in range(len(x)):
      assert x[i]['line'] == y[i]['line'] + 1  # the CSV's header is line 1
      assert all(np.array_equal(x[i][k], y[i][k]) for k in x[i] if k != 'line')


def test_fraction_splits_keep_groups_together_and_are_seeded(tmp_path):
  rows = []
  for i in range(60):
    picture(tmp_path / f'{i}.png', i, size=(8, 8))
    rows.append((f'{i}.png', f't{i}', 'xy'[i % 2], f'speaker{i // 4}'))
  path = write_csv(tmp_path / 'm.csv', ['image', 'text', 'label', 'group'], rows)

  def groups(b):
    return {s: {g.decode() for g in (b.as_data_source(split=s)[i]['group']
                                     for i in range(b.info.splits[s].num_examples))}
            for s in manifest.SPLITS}

  g0 = groups(build(path, tmp_path))
  assert not (g0['train'] & g0['validation'] or g0['train'] & g0['test']
              or g0['validation'] & g0['test'])
  assert sum(map(len, g0.values())) == 15 and len(g0['train']) >= 10
  assert groups(build(path, tmp_path, split_seed=1)) != g0


# ----------------------------------------------------------------------------- bad input


def _bad_case(tmp_path, case):
  """(manifest path, build options, expected message) for one kind of bad input."""
  tone(tmp_path / 'ok.wav')
  for i in range(6):
    picture(tmp_path / f'{i}.png', i)
  good = [(f'{i}.png', 'ok.wav', f'text {i}', 'ab'[i % 2], ['train', 'train', 'train', 'train', 'validation', 'test'][i])
          for i in range(6)]
  header = ['image', 'audio', 'text', 'label', 'split']
  options, rows = {}, list(good)
  if case == 'missing file':
    rows[2] = ('nowhere.png',) + rows[2][1:]
    expect = r"line 4, column 'image', value 'nowhere.png': no such file"
  elif case == 'unreadable image':
    (tmp_path / 'junk.png').write_bytes(b'not a png')
    rows[2] = ('junk.png',) + rows[2][1:]
    expect = r"line 4, column 'image', value 'junk.png': .*junk.png is not a readable image"
  elif case == 'truncated wav':
    data = (tmp_path / 'ok.wav').read_bytes()
    (tmp_path / 'cut.wav').write_bytes(data[:len(data) // 2])
    rows[1] = (rows[1][0], 'cut.wav') + rows[1][2:]
    expect = r"line 3, column 'audio', value 'cut.wav': .*truncated: its data chunk declares"
  elif case == 'sample rate':
    tone(tmp_path / 'fast.wav', rate=16000)
    rows[1] = (rows[1][0], 'fast.wav') + rows[1][2:]
    options = {'resample': False}
    expect = r"line 3, column 'audio', value 'fast.wav': .*16000 Hz.*resample=False"
  elif case == 'empty text':
    rows[3] = rows[3][:2] + ('',) + rows[3][3:]
    expect = r"line 5, column 'text', value '': empty text; .*missing_ok=\('text',\)"
  elif case == 'unknown label':
    (tmp_path / 'classes.txt').write_text('a\nb\n')
    rows[0] = rows[0][:3] + ('c',) + rows[0][4:]
    options = {'classes': 'classes.txt'}
    expect = r"line 2, column 'label', value 'c': not one of the 2 declared classes"
  elif case == 'duplicate':
    rows.append(rows[1])
    expect = r"line 8, column 'image', value '1.png': duplicates line 3"
  elif case == 'group leak':
    header = header + ['group']
    rows = [r + (('s1' if i in (0, 5) else f'g{i}'),) for i, r in enumerate(rows)]
    expect = r"group 's1' in train \(line 2\), test \(line 7\)"
  elif case == 'unknown column':
    header = header[:-1] + ['spilt']
    expect = r"line 1: unknown column\(s\) \['spilt'\]; valid columns"
  else:
    raise ValueError(case)
  return write_csv(tmp_path / 'm.csv', header, rows), options, expect


BAD = ('missing file', 'unreadable image', 'truncated wav', 'sample rate', 'empty text',
       'unknown label', 'duplicate', 'group leak', 'unknown column')


@pytest.mark.parametrize('case', BAD)
def test_bad_input_stops_the_build_naming_line_column_and_value(tmp_path, case):
  path, options, expect = _bad_case(tmp_path, case)
  with pytest.raises(manifest.ManifestError, match=expect):
    cfg = manifest.manifest_config(path, sample_rate=SR, image_size=16, **options)
    manifest.prepare(cfg, data_dir=str(tmp_path / 'tfds'), write_tfrecord=False)
  # Nothing half-built looks finished: no prepared copy, no dataset_info.json anywhere.
  assert not list((tmp_path / 'tfds').rglob('dataset_info.json'))


@pytest.mark.parametrize('case', ('missing file', 'truncated wav', 'empty text', 'duplicate'))
def test_on_error_skip_leaves_bad_rows_out_and_counts_them(tmp_path, case):
  path, options, _ = _bad_case(tmp_path, case)
  b = build(path, tmp_path, on_error='skip', **options)
  skipped = b.info.metadata['skipped']
  assert skipped['rows'] == 1 and sum(skipped['reasons'].values()) == 1
  assert sum(s.num_examples for s in b.info.splits.values()) == 5 + (case == 'duplicate')


def test_a_wrong_config_or_missing_manifest_is_named(tmp_path):
  with pytest.raises(manifest.ManifestError, match=r'the manifest .*nowhere.csv cannot be read'):
    manifest.manifest_config(tmp_path / 'nowhere.csv')
  write_csv(tmp_path / 'm.csv', ['image', 'label'], [('0.png', 'a')])
  with pytest.raises(manifest.ManifestError, match=r"has no \['audio'\] column"):
    manifest.manifest_config(tmp_path / 'm.csv', modalities=('image', 'audio'))
  with pytest.raises(manifest.ManifestError, match=r'on_error=.*valid choices'):
    manifest.manifest_config(tmp_path / 'm.csv', on_error='ignore')
  config = config_utils.load_config_file(os.path.join(REPO, 'experiments', 'manifest.py'))
  config.data.bogus = 1
  with pytest.raises(config_utils.ConfigError, match=r"unknown option\(s\) \['bogus'\]"):
    train.check_config(config)


# ----------------------------------------------------------------------------- missing modalities


def _trimodal(tmp_path, n=48):
  """n rows of image, audio and text; every 4th lacks its audio, every 6th its image."""
  rows = []
  for i in range(n):
    picture(tmp_path / f'{i}.png', i, size=(16, 16))
    tone(tmp_path / f'{i}.wav', seconds=0.25, freq=200 + 40 * (i % 3))
    rows.append(('' if i % 6 == 5 else f'{i}.png', '' if i % 4 == 3 else f'{i}.wav',
                 f'sound {i % 3} take {i}', f'c{i % 3}'))
  return write_csv(tmp_path / 'tri.csv', ['image', 'audio', 'text', 'label'], rows)


# The attention fusions at one layer and two heads: what is tested is that rows lacking a
# modality train and stay invisible, which depth does not change; compiling them is most of
# this test's time.
SMALL_FUSION = dict(num_layers=1, num_heads=2, mlp_ratio=1)
FAST_COMPILE = {'xla_backend_optimization_level': 0}
SMALL = {'bottleneck': dict(SMALL_FUSION, fusion_layer=0), 'crossattn': SMALL_FUSION,
         'joint': SMALL_FUSION}


def _tiny_model_config(fusion, path, tmp_path):
  config = config_utils.load_config_file(
      os.path.join(REPO, 'experiments', 'manifest.py')
      + f':path={path},missing_ok=image+audio,task=both,pair=image+audio,fusion={fusion},'
      'image_size=16,sample_rate=8000,clip_seconds=0.25,text_length=16')
  config.data.data_dir = str(tmp_path / 'tfds')
  for m, kind in (('image', 'cnn'), ('audio', 'lenet'), ('text', 'transformer')):
    tiny = encoders_lib.encoder_config(m, kind, **TINY_ENCODERS[(m, kind)])
    if m == 'audio':  # the manifest's rate
      tiny.features.update(config.model.encoders.audio.features.to_dict())
    config.model.encoders[m] = tiny
  config.model.fusion.update(SMALL.get(fusion, {}))
  config.model.dim = 16
  return config


@pytest.mark.slow
def test_trimodal_manifest_with_missing_rows_trains_under_every_fusion(tmp_path):
  """Every fusion type takes a training step on rows that really lack a modality, and what a
  row lacks never reaches its logits (replacing the zero-filled input changes nothing)."""
  path = _trimodal(tmp_path)
  config = _tiny_model_config('concat', path, tmp_path)
  source = datasets.get_source(config.data, 'train')
  batches = input_pipeline.make_pipeline(source, global_batch_size=16, seed=0)
  batch = next(batches)
  batches.close()
  present = batch['present']
  assert not present.all() and present.any(axis=1).all()
  noisy = dict(batch)
  rng = np.random.default_rng(1)
  for i, m in enumerate(manifest.MODALITIES[:2]):  # image, audio
    lacking = ~present[:, i]
    x = rng.integers(0, 255, batch[m].shape).astype(batch[m].dtype) if m == 'image' else (
        rng.uniform(-1, 1, batch[m].shape).astype(batch[m].dtype))
    noisy[m] = np.where(lacking.reshape((-1,) + (1,) * (x.ndim - 1)), x, batch[m])
  num_classes = datasets.dataset_info(config.data).num_classes
  for fusion in sorted(fusion_lib.FUSIONS):
    config = _tiny_model_config(fusion, path, tmp_path)
    model = train.build_model(config, num_classes, axis_name=None)
    tx = optax.adam(1e-3)
    init = train.make_init_fn(model, tx, batch)
    # Modality dropout on rows that lack one: once (test_train checks the mask); it adds a
    # few seconds of compiling to every fusion.
    step = train.make_train_step(model, tx, None,
                                 modality_dropout=0.3 if fusion == 'concat' else 0.0,
                                 objectives=config.objectives)

    @jax.jit
    def train_one_step(key, batch):
      state = init(key)  # pylint: disable=cell-var-from-loop
      trained, metrics = step(state, batch)  # pylint: disable=cell-var-from-loop
      return state.params, trained, metrics['loss']

    key = jax.random.key(0, impl='rbg')
    # XLA's backend optimisations off: a third less compiling, and nothing here is timed.
    compiled = train_one_step.lower(key, batch).compile(FAST_COMPILE)
    before, trained, loss = compiled(key, batch)
    assert np.isfinite(float(loss)), fusion
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(before),
                                                         jax.tree.leaves(trained.params))), fusion
    # One compiled program for both batches (two programs could round differently).
    variables = {'params': trained.params, **({'batch_stats': trained.batch_stats}
                                              if trained.batch_stats else {})}
    logits = jax.jit(lambda variables, b: model.apply(variables, b, train=False)['logits']  # pylint: disable=cell-var-from-loop
                     ).lower(variables, batch).compile(FAST_COMPILE)
    a, b = logits(variables, batch), logits(variables, noisy)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=fusion)


def test_retrieval_ranks_only_rows_with_both_modalities():
  from crossmodal.evaluators import retrieval  # pylint: disable=import-outside-toplevel
  present = np.array([[1, 1, 1], [0, 1, 1], [1, 0, 1], [1, 1, 0]], bool)  # image, audio, text
  batch = {'mask': np.array([1, 1, 1, 0], bool), 'present': present}
  kept = retrieval._rows_with_both(('audio', 'image'), batch, 0)['mask']  # pylint: disable=protected-access
  assert kept.tolist() == [True, False, False, False]  # row 3 is eval padding
  complete = {'mask': batch['mask']}  # complete data: untouched
  assert retrieval._rows_with_both(('image', 'text'), complete, 0) is complete  # pylint: disable=protected-access


# ----------------------------------------------------------------------------- fingerprint


def test_fingerprint_is_recorded_recomputed_and_changes_with_the_data(tmp_path):
  for i in range(20):
    picture(tmp_path / f'{i}.png', i, size=(8, 8))
  rows = [(f'{i}.png', f't{i}', 'ab'[i % 2]) for i in range(20)]
  b = build(write_csv(tmp_path / 'm.csv', ['image', 'text', 'label'], rows), tmp_path)
  recorded = fingerprint.recorded(b)
  assert recorded == fingerprint.of_builder(b) and set(recorded) == {*manifest.SPLITS, 'all'}
  picture(tmp_path / '0.png', 99, size=(8, 8))  # one image changes, the manifest does not
  other = manifest.prepare(b.builder_config, data_dir=str(tmp_path / 'tfds2'), write_tfrecord=False)
  changed = {s for s in manifest.SPLITS if fingerprint.recorded(other)[s] != recorded[s]}
  assert len(changed) == 1

  script = [sys.executable, os.path.join(REPO, 'scripts', 'prepare_data.py'), '--dataset',
            'manifest', '--config', b.builder_config.name, '--data_dir', str(tmp_path / 'tfds'),
            '--verify']
  ok = subprocess.run(script, capture_output=True, text=True, cwd=REPO)
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert f"all        {recorded['all']}  ok" in ok.stdout
  meta = next((tmp_path / 'tfds').rglob('metadata.json'))
  stored = json.loads(meta.read_text())
  stored['fingerprint']['train'] = '0' * 64
  meta.write_text(json.dumps(stored))
  bad = subprocess.run(script, capture_output=True, text=True, cwd=REPO)
  assert bad.returncode == 1 and 'DIFFERS' in bad.stdout
