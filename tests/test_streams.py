"""The streams evaluator (evaluators/streams.py) on a tiny trained crossattn run: its missing-
modality accuracy agrees with the robustness evaluator's, a missing stream's block is exactly
zero, and it refuses fusions it cannot decompose."""
import numpy as np
import pytest

from crossmodal import config_utils
from crossmodal import evaluators
from crossmodal import train
from conftest import tiny_config


@pytest.mark.slow
def test_streams_separates_the_two_effects_of_a_missing_modality(tmp_path):
  config = tiny_config('size=tiny,fusion=crossattn')
  config.evaluators.streams = evaluators.evaluator_config('streams')
  config.evaluators.robustness = evaluators.evaluator_config('robustness', levels=(0.0, 1.0),
                                                             noises={})
  config.train.num_steps = 4  # the checks hold for any weights; a few steps is enough
  workdir = str(tmp_path / 'w')
  results = train.train_and_evaluate(config, workdir, final_checkpoint='latest').final
  s, rob = results['streams'], results['robustness']
  names = ('image', 'audio')
  for m in names:
    assert s[f'missing_{m}/accuracy'] == pytest.approx(rob[f'missing_{m}/accuracy'])
    for key in (f'missing_{m}/own_block_zeroed/accuracy', f'missing_{m}/keys_masked/accuracy',
                f'probe_{m}/accuracy'):
      assert 0 <= s[key] <= 1, key
  assert {'missing_image/probe_audio/accuracy', 'missing_audio/probe_image/accuracy'} <= set(s)
  assert s['num_examples'] == results['test']['num_examples']

  # Without the image, the image stream's block is exactly zero (the decomposition's premise).
  run, state, _ = train.restore_state(config, workdir, 'latest')
  predict = run.engine.bind(run.strategy.put_state(state))
  hide = lambda size: np.stack([np.zeros(size, bool), np.ones(size, bool)], 1)
  fused = predict.over(lambda out: {'fused': out['fused']}, run.batches('test'),
                       present_fn=hide)['fused']
  width = fused.shape[1] // 2
  assert s['block_width'] == width
  assert np.all(fused[:, :width] == 0) and np.abs(fused[:, width:]).max() > 0


@pytest.mark.parametrize('fusion,overrides,match', [
    ('concat', {}, "needs fusion 'crossattn'"),
    ('crossattn', {'direction': 'a->b'}, "direction='a->b'"),
    ('crossattn', {'heads': 'per_stream'}, 'no shared classifier'),
])
def test_streams_refuses_what_it_cannot_decompose(fusion, overrides, match):
  config = tiny_config(f'size=tiny,fusion={fusion}')
  config.model.fusion.update(overrides)
  config.evaluators.streams = evaluators.evaluator_config('streams')
  with pytest.raises(config_utils.ConfigError, match=match):
    train.check_config(config)
