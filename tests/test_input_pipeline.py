"""Grain pipeline: sharding, determinism, per-epoch reshuffle, exact resume, padded eval."""
import numpy as np
import pytest

from crossmodal.data import datasets, input_pipeline, synthetic


class IdSource:
  """Example i carries i in every field, plus provenance fields the pipeline must drop."""

  def __init__(self, size):
    self.size = size

  def __len__(self):
    return self.size

  def __getitem__(self, i):
    i = int(i)
    return {'image': np.full((2, 2, 1), i % 256, np.uint8),
            'audio': np.array([i, -i, 32767, -32768], np.int16),
            'label': np.int64(i), 'image_index': np.int64(1000 + i), 'audio_id': f'clip_{i}'}


def ids(batch):
  return batch['label'].tolist()


def take(pipeline, n):
  return [next(pipeline) for _ in range(n)]


def make(size=24, **kwargs):
  kwargs = {'global_batch_size': 8, 'seed': 0, 'process_index': 0, 'process_count': 1,
            **kwargs}
  return input_pipeline.make_pipeline(IdSource(size), **kwargs)


def test_batch_contract():
  batch = next(make(global_batch_size=4))
  assert sorted(batch) == ['audio', 'image', 'label']  # provenance dropped, no mask in training
  assert batch['image'].dtype == np.uint8 and batch['image'].shape == (4, 2, 2, 1)
  assert batch['label'].dtype == np.int32 and batch['label'].shape == (4,)
  assert batch['audio'].dtype == np.float32 and batch['audio'].shape == (4, 4)
  i = batch['label'].astype(np.float64)
  np.testing.assert_array_equal(batch['audio'][:, 0], i / 32768)
  np.testing.assert_array_equal(batch['audio'][:, 2:], [[32767 / 32768, -1.0]] * 4)
  np.testing.assert_array_equal(batch['image'][:, 0, 0, 0], batch['label'] % 256)


def test_batch_is_the_stack_of_the_transformed_examples():
  """Batches are built in place from source indices; they must equal stacking the transform of
  each example (the straightforward definition), including the padded, masked eval batch."""
  source = IdSource(13)
  pipeline = make(size=13, shuffle=False, drop_remainder=False, num_epochs=1)
  batches = take(pipeline, 2)
  rows = [input_pipeline.to_model_example(source[i]) for i in range(13)]
  rows += [{k: np.zeros_like(v) for k, v in rows[0].items()}] * 3  # padding to 16
  for k, batch in enumerate(batches):
    expected = {key: np.stack([r[key] for r in rows[8 * k:8 * (k + 1)]]) for key in rows[0]}
    assert sorted(batch) == sorted(expected) + ['mask']
    for key, value in expected.items():
      assert batch[key].dtype == value.dtype
      np.testing.assert_array_equal(batch[key], value)
  np.testing.assert_array_equal(batches[1]['mask'], [True] * 5 + [False] * 3)


def test_examples_that_do_not_stack_are_named():
  def ragged(example):
    out = input_pipeline.to_model_example(example)
    out['audio'] = out['audio'][:2 + int(out['label']) % 2]  # odd examples are longer
    return out
  pipeline = make(shuffle=False, transform=ragged)
  with pytest.raises(ValueError, match=r"example 1 does not match the batch: 'audio' is \(3,\)"):
    next(pipeline)


def test_shards_are_disjoint_complete_and_assemble_the_single_process_batch():
  one = take(make(size=48, seed=5), 12)  # two epochs
  shards = [take(make(size=48, seed=5, process_index=p, process_count=2), 12) for p in (0, 1)]
  for k in range(12):
    first, second = ids(shards[0][k]), ids(shards[1][k])
    assert len(first) == len(second) == 4  # local batch = 8 // 2
    assert not set(first) & set(second)
    # Stacking processes in order (make_array_from_process_local_data) = 1-process batch.
    assert first + second == ids(one[k])
  for epoch in (0, 1):
    seen = [i for p in (0, 1) for b in shards[p][6 * epoch:6 * (epoch + 1)] for i in ids(b)]
    assert sorted(seen) == list(range(48))  # each epoch covers every example exactly once


def test_deterministic_given_seed():
  a, b, c = take(make(seed=7), 9), take(make(seed=7), 9), take(make(seed=8), 9)
  assert [ids(x) for x in a] == [ids(x) for x in b]
  assert [ids(x) for x in a] != [ids(x) for x in c]


def test_each_epoch_is_a_new_permutation():
  batches = take(make(size=24), 9)  # 3 epochs of 3 batches
  epochs = [sum((ids(b) for b in batches[3 * e:3 * e + 3]), []) for e in range(3)]
  for order in epochs:
    assert sorted(order) == list(range(24))
  assert epochs[0] != epochs[1] != epochs[2] != epochs[0]
  assert epochs[0] != list(range(24))


@pytest.mark.parametrize('process_index,process_count', [(0, 1), (1, 2)])
@pytest.mark.parametrize('start', [0, 1, 4, 7])
def test_resume_yields_the_uninterrupted_batches(start, process_index, process_count):
  # 23 examples: batches straddle epoch boundaries, the hardest case for resumption.
  kwargs = dict(size=23, seed=3, process_index=process_index, process_count=process_count)
  full = make(**kwargs)
  reference = take(full, 12)
  assert full.position == 12
  resumed = make(start_index=start, **kwargs)
  assert resumed.position == start
  for k in range(start, 12):
    batch = next(resumed)
    assert resumed.position == k + 1
    for key in reference[k]:
      np.testing.assert_array_equal(batch[key], reference[k][key])


def test_interrupted_run_continues_where_it_stopped():
  first = make(seed=11)
  before = take(first, 5)
  saved = first.position  # what the checkpoint stores
  after = take(make(seed=11, start_index=saved), 4)
  assert [ids(b) for b in before + after] == [ids(b) for b in take(make(seed=11), 9)]


@pytest.mark.parametrize('process_count', [1, 2, 4])
def test_eval_pass_counts_every_example_once(process_count):
  size, global_batch = 23, 8
  pipes = [make(size=size, global_batch_size=global_batch, shuffle=False, drop_remainder=False,
                num_epochs=1, process_index=p, process_count=process_count)
           for p in range(process_count)]
  lengths = {len(p) for p in pipes}
  assert lengths == {3}  # ceil(23 / 8), the same on every process (collectives stay in step)
  counted = []
  for pipe in pipes:
    batches = list(pipe)
    assert pipe.position == 3
    for batch in batches:
      assert batch['mask'].dtype == bool
      assert batch['label'].shape == batch['mask'].shape == (global_batch // process_count,)
      assert batch['audio'].shape == (global_batch // process_count, 4)  # fixed shape
      counted += batch['label'][batch['mask']].tolist()
      assert not batch['audio'][~batch['mask']].any()  # padding rows are zeros
  assert sorted(counted) == list(range(size))
  with pytest.raises(StopIteration):
    next(pipes[0])


def test_finite_training_drops_only_the_last_partial_batch():
  pipe = make(size=23, num_epochs=2)  # 46 examples -> 5 batches of 8, 6 dropped
  batches = list(pipe)
  assert len(batches) == pipe.num_batches == 5
  assert all(len(ids(b)) == 8 for b in batches)
  assert len(set(sum((ids(b) for b in batches[:2]), []))) == 16


def test_infinite_pipeline_runs_past_an_epoch():
  pipe = make(size=10, global_batch_size=4)
  assert pipe.num_batches is None
  labels = sum((ids(b) for b in take(pipe, 25)), [])  # 10 epochs
  assert np.bincount(labels).tolist() == [10] * 10
  with pytest.raises(TypeError, match='infinite'):
    len(pipe)


def test_random_access_matches_iteration():
  pipe = make(seed=2)
  batches = take(pipe, 6)
  for k in (0, 3, 5):
    assert ids(pipe.batch(k)) == ids(batches[k])


def test_errors_name_the_problem():
  with pytest.raises(ValueError, match='global_batch_size=10 is not divisible by process_count=4'):
    make(global_batch_size=10, process_count=4)
  with pytest.raises(ValueError, match='process_index'):
    make(process_index=2, process_count=2)
  with pytest.raises(ValueError, match='start_index=4 is past the end'):
    make(num_epochs=1, start_index=4)
  with pytest.raises(ValueError, match='no full batch'):
    make(size=5, num_epochs=1)


class CountingSource(IdSource):
  def __init__(self, size):
    super().__init__(size)
    self.reads = [0] * size

  def __getitem__(self, i):
    self.reads[int(i)] += 1
    return super().__getitem__(i)


def test_memory_cache_reads_each_example_once_and_changes_no_batch():
  counting = CountingSource(24)
  kwargs = dict(global_batch_size=8, seed=3, process_index=0, process_count=1)
  cached = input_pipeline.make_pipeline(datasets.MemoryCache(counting), **kwargs)
  plain = make(seed=3)
  for a, b in zip(take(cached, 9), take(plain, 9)):  # three epochs
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert counting.reads == [1] * 24


def test_get_source_caches_only_when_configured():
  config = {'name': 'synthetic', 'synthetic': {'num_validation': 16}}
  assert not isinstance(datasets.get_source(config, 'validation'), datasets.MemoryCache)
  cached = datasets.get_source({**config, 'cache': True}, 'validation')
  assert isinstance(cached, datasets.MemoryCache) and len(cached) == 16


def test_synthetic_source_through_pipeline_with_workers():
  """Grain worker processes give the same batches as the threaded path."""
  params = synthetic.SyntheticParams(num_validation=40, audio_length=400, image_size=12)
  source = synthetic.SyntheticSource('validation', params)
  kwargs = dict(global_batch_size=8, seed=1, process_index=0, process_count=1, start_index=2)
  threaded = take(input_pipeline.make_pipeline(source, **kwargs), 4)
  workers = input_pipeline.make_pipeline(source, worker_count=2, **kwargs)
  try:
    multi = [{k: np.array(v) for k, v in b.items()} for b in take(workers, 4)]
  finally:
    workers.close()
  assert threaded[0]['image'].shape == (8, 12, 12, 1) and threaded[0]['audio'].shape == (8, 400)
  for a, b in zip(threaded, multi):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
