"""The streams evaluator (evaluators/streams.py) refuses fusions it cannot decompose; it runs
end to end in tests/test_evaluators.py (test_attention_maps_and_pooled_vectors_under_crossattn)."""
import pytest

from crossmodal import config_utils
from crossmodal import evaluators
from crossmodal import train
from conftest import tiny_config


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
