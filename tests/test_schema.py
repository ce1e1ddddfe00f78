"""crossmodal/schema.py: one way to state and check options (types, choices, ranges, unknown
and missing keys, rules between fields), every problem of a node reported at once."""
import dataclasses

import ml_collections
import numpy as np
import pytest

from crossmodal import schema


def _lengths_agree(where, v):
  if v['win'] > v['size']:
    return f'{where}.win={v["win"]}: must be <= size ({v["size"]})'
  return None


@dataclasses.dataclass(frozen=True)
class Window(schema.Options):
  size: int = 8
  win: int = 8
  mode: str = 'a'
  limit: float | None = None
  WHERE = 'config.window'
  CHOICES = {'mode': ('a', 'b')}
  RULES = {'size': schema.POSITIVE_INT, 'limit': schema.POSITIVE}
  NULLABLE = ('limit',)
  RELATIONS = (_lengths_agree,)


def test_options_dataclass_checks_itself_and_reports_every_problem():
  assert Window(size=16, win=4).win == 4
  assert Window(size=np.int64(4), win=4).size == 4  # NumPy integers are ints
  with pytest.raises(schema.ConfigError) as e:
    Window(size=0, mode='c', limit=-1.0)
  assert e.value.problems == ['config.window.size=0: must be a positive int',
                              "config.window.mode='c': valid choices: ('a', 'b')",
                              'config.window.limit=-1.0: must be a positive number']
  with pytest.raises(schema.ConfigError, match=r'config.window.win=9: must be <= size \(8\)'):
    Window(win=9)  # relations run once every field is valid
  with pytest.raises(schema.ConfigError, match='must be True or False'):
    schema.check('x', {'on': 'yes'}, {'on': False})


def test_from_config_names_the_node_as_the_caller_says():
  cfg = ml_collections.ConfigDict({'size': 4, 'win': 2})
  assert Window.from_config(cfg) == Window(size=4, win=2)
  assert Window.from_config(None) == Window()
  with pytest.raises(schema.ConfigError, match=r"config.model.w: unknown option\(s\) \['wn'\]; "
                     r"valid options: \['limit', 'mode', 'size', 'win'\]"):
    Window.from_config({'wn': 2}, 'config.model.w')


def test_required_fields_and_collected_problems():
  assert schema.problems('c', {'a': 1}, {'a': 0, 'b': 0, 'c': 0}, required=('b',)) == [
      'c.b is missing']
  def bad(message):
    def check():
      raise schema.ConfigError(message)
    return check
  with pytest.raises(schema.ConfigError) as e:
    schema.collect(bad('one'), lambda: None, bad('two'), bad('one'))
  assert e.value.problems == ['one', 'two']
  assert str(e.value) == 'invalid config:\n  one\n  two'
