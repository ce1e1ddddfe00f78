"""scripts/search.py and crossmodal/search.py: ranking a manifest by a query in another modality.

The scores are checked against cosines computed from the whole model's `embeddings` output
(the path training and the retrieval evaluator use), not from search's own encoder calls.
"""
import json
import os
import shutil
import sys

import numpy as np
import pytest

from crossmodal import config_utils
from crossmodal import schema
from crossmodal import search
from crossmodal import train
from crossmodal.data import manifest
from crossmodal.models import encoders as encoders_lib
from crossmodal.models import text as text_lib
from conftest import REPO, TINY_ENCODERS
from test_manifest import picture, write_csv

sys.path.insert(0, os.path.join(REPO, 'scripts'))
import search as search_script  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

WORDS = ('red', 'green', 'blue', 'round', 'square', 'big')


def _collection(directory, n=30):
  directory.mkdir(parents=True, exist_ok=True)
  rows = []
  for i in range(n):
    picture(directory / f'{i}.png', i, size=(12, 12))
    rows.append((f'{i}.png', f'{WORDS[i % 6]} {WORDS[(i // 6) % 6]} {i}'))
  return write_csv(directory / 'items.csv', ['image', 'text'], rows)


def _config(path, tmp, task='contrastive'):
  config = config_utils.load_config_file(
      os.path.join(REPO, 'experiments', 'manifest.py')
      + f':path={path},task={task},image_size=16,text_length=16,steps=3,batch=8')
  config.data.data_dir = str(tmp / 'tfds')
  for m, kind in (('image', 'cnn'), ('text', 'transformer')):
    config.model.encoders[m] = encoders_lib.encoder_config(m, kind, **TINY_ENCODERS[(m, kind)])
  config.model.dim = 16
  config.evaluators = {'validation': config.evaluators.validation}
  return config


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A 3-step contrastive image-text run on a 30-row manifest: (config, workdir, manifest)."""
  tmp = tmp_path_factory.mktemp('search')
  path = _collection(tmp / 'data')
  config = _config(path, tmp)
  workdir = str(tmp / 'run')
  train.train_and_evaluate(config, workdir, final_checkpoint=None)
  return config, workdir, path


def _direct(config, workdir, path, query):
  """Cosine scores of every row's image against `query`, from the whole model's embeddings."""
  _, state, _ = train.restore_state(config, workdir, 'best')
  model = train.build_model(config, 1, axis_name=None)  # unlabelled: a one-class head
  variables = {'params': state.params, **({'batch_stats': state.batch_stats}
                                          if state.batch_stats else {})}
  cfg = manifest.manifest_config(path, image_size=16)
  examples = manifest.decode_all(cfg)
  images = np.stack([e['image'] for e in examples])
  texts = text_lib.encode([query] * len(examples), 16)
  out = model.apply(variables, {'image': images, 'text': texts}, train=False)['embeddings']
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  image, text = unit(np.asarray(out['image'])), unit(np.asarray(out['text']))
  return [e['line'] for e in examples], image @ text[0]


def test_search_scores_are_the_models_cosines_and_are_cached(trained):
  config, workdir, path = trained
  run = search.load(workdir)
  assert run.pair == ('image', 'text') and search.target_of(run, 'text') == 'image'
  lines, vectors, cache = search.collection(run, path, 'image')
  q = search.embed(run, 'text', [search.query_example(run, 'text', 'red round 0')])[0]
  order, scores = search.top_k(q, vectors, 5)
  direct_lines, direct = _direct(config, workdir, path, 'red round 0')
  assert list(lines) == direct_lines == list(range(2, 32))
  np.testing.assert_allclose(vectors @ q, direct, rtol=1e-5, atol=1e-6)
  assert list(order) == list(np.argsort(-direct, kind='stable')[:5])
  np.testing.assert_allclose(scores, np.sort(direct)[::-1][:5], rtol=1e-5, atol=1e-6)

  # Read back from the cache; a changed image makes a new one.
  mtime = os.stat(cache).st_mtime_ns
  again = search.collection(run, path, 'image')
  assert again[2] == cache and os.stat(cache).st_mtime_ns == mtime
  np.testing.assert_array_equal(again[1], vectors)
  picture(path.parent / '3.png', 99, size=(12, 12))
  changed = search.collection(run, path, 'image')
  assert changed[2] != cache and not np.array_equal(changed[1][3], vectors[3])
  np.testing.assert_array_equal(changed[1][4:], vectors[4:])
  picture(path.parent / '3.png', 3, size=(12, 12))  # as it was, for the other tests


def test_search_script_prints_the_top_k_and_writes_a_sheet(trained, capsys, tmp_path):
  _, workdir, path = trained
  run = search.load(workdir)
  lines, _, _ = search.collection(run, path, 'text')
  # An image query ranks the texts; its own row's image is among the items.
  query = str(path.parent / '7.png')
  sheet = str(tmp_path / 'sheet.png')
  assert search_script.main([f'--workdir={workdir}', f'--manifest={path}', f'--image={query}',
                             '--k=3', f'--sheet={sheet}']) == 0
  printed = capsys.readouterr().out
  q = search.embed(run, 'image', [search.query_example(run, 'image', query)])[0]
  texts = search.collection(run, path, 'text')[1]
  order, scores = search.top_k(q, texts, 3)
  rows = printed.splitlines()[2:5]
  for row, i, score in zip(rows, order, scores):
    rank, cosine, line = row.split()[:3]
    assert int(line) == lines[i] and abs(float(cosine) - score) < 1e-4, row
  from PIL import Image  # pylint: disable=import-outside-toplevel
  with Image.open(sheet) as im:
    assert im.size[0] == 3 * 128 and im.size[1] > 128


def test_bad_runs_queries_and_collections_are_named(trained, tmp_path, capsys):
  _, workdir, path = trained
  run = search.load(workdir)
  with pytest.raises(schema.ConfigError, match='no config.json'):
    search.load(str(tmp_path))
  with pytest.raises(schema.ConfigError, match=r"aligned \['image', 'text'\]: a audio query"):
    search.target_of(run, 'audio')
  with pytest.raises(schema.ConfigError, match='query .*nowhere.png does not exist'):
    search.query_example(run, 'image', str(tmp_path / 'nowhere.png'))
  (tmp_path / 'junk.png').write_bytes(b'not a png')
  with pytest.raises(schema.ConfigError, match='junk.png cannot be read'):
    search.query_example(run, 'image', str(tmp_path / 'junk.png'))

  # A collection row pointing nowhere: named with its line; skipped on request.
  rows = [(str(path.parent / f'{i}.png'), f't{i}') for i in range(4)] + [('gone.png', 'x')]
  bad = write_csv(tmp_path / 'bad.csv', ['image', 'text'], rows)
  with pytest.raises(manifest.ManifestError, match=r'line 6.*image.*gone.png'):
    search.collection(run, bad, 'image')
  assert search_script.main([f'--workdir={workdir}', f'--manifest={bad}', '--text=t1']) == 2
  assert 'line 6' in capsys.readouterr().err
  lines, _, _ = search.collection(run, bad, 'image', on_error='skip')
  assert list(lines) == [2, 3, 4, 5]

  # A run without a contrastive objective; a checkpoint of another model than its config.
  other = tmp_path / 'classifier'
  shutil.copytree(workdir, other)
  recorded = json.loads((other / 'config.json').read_text())
  recorded['objectives']['contrastive']['weight'] = 0.0
  (other / 'config.json').write_text(json.dumps(recorded))
  with pytest.raises(schema.ConfigError, match='trained no contrastive objective'):
    search.load(str(other))
  recorded['objectives']['contrastive']['weight'] = 1.0
  recorded['model']['encoders']['image']['widths'] = [8, 8]
  (other / 'config.json').write_text(json.dumps(recorded))
  with pytest.raises(schema.ConfigError, match=r'params/image_encoder does not fit the image '
                                                r'encoder its config.json describes'):
    search.load(str(other))


def test_unlabelled_data_trains_no_label_objective(trained, tmp_path):
  """The collection has no label column: a classification objective on it is a config error
  that says so, before anything is compiled."""
  _, _, path = trained
  config = _config(path, tmp_path, task='both')
  with pytest.raises(schema.ConfigError, match=r'no labels .* config.objectives.classification '
                                                r'train on them; add a label column'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))


def test_an_audio_query_is_read_as_the_collection_reads_its_rows(tmp_path):
  """A query file goes through the manifest's own readers with the run's options (22.05 kHz
  stereo flac -> 8 kHz mono, 0.25 s), so query and items meet as equals."""
  from test_manifest import tone  # pylint: disable=import-outside-toplevel
  tone(tmp_path / 'q.flac', seconds=0.4, rate=22050, channels=2, fmt='FLAC')
  data = dict(image_size=16, image_channels=3, sample_rate=8000, clip_seconds=0.25,
              resample=True, mono=True, text_length=16, lowercase=False)
  run = search.Run(str(tmp_path), 0, ('audio', 'text'), {}, data)
  query = search.query_example(run, 'audio', str(tmp_path / 'q.flac'))
  cfg = manifest.manifest_config(write_csv(tmp_path / 'c.csv', ['audio'], [('q.flac',)]),
                                 **{k: data[k] for k in search._READ})  # pylint: disable=protected-access
  row = manifest.decode_all(cfg)[0]
  assert query['audio'].dtype == np.int16 and query['audio'].shape == (2000,)
  np.testing.assert_array_equal(query['audio'], row['audio'])
  inputs = search._model_inputs(run, 'audio', [query])  # pylint: disable=protected-access
  assert inputs.dtype == np.float32 and np.abs(inputs).max() <= 1.0
