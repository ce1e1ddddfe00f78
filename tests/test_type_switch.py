"""Switching a typed node by override (config_utils.switch_type), as an ablation is written:
`--config.model.fusion.type=late`, `--config.model.encoders.image.type=vit`, with the new
type's fields overridable on the same command line."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, SYNTHETIC
from crossmodal import config_utils
from crossmodal.models import encoders as encoders_lib
from crossmodal.models import fusion as fusion_lib

AVMNIST = os.path.join(REPO, 'experiments', 'avmnist.py')


def _locked(spec):
  config = config_utils.load_config_file(spec)
  config.lock()  # as --config loads it
  return config


def test_fields_at_the_old_defaults_give_way_to_the_new_types():
  config = _locked(SYNTHETIC)  # concat, presence_indicator at its default
  config_utils.switch_type(config, 'model.fusion', 'late')
  assert config.model.fusion.to_dict() == {'type': 'late'}
  config_utils.switch_type(config, 'model.fusion', 'crossattn')
  assert config.model.fusion.to_dict() == fusion_lib.fusion_config('crossattn').to_dict()
  config.model.fusion.num_layers = 3  # the new type's fields exist in the locked config
  with pytest.raises(AttributeError):
    config.model.fusion.presence_indicator = True  # and only those
  config_utils.switch_type(config, 'model.fusion', 'crossattn')  # same type: nothing changes
  assert config.model.fusion.num_layers == 3


def test_explicit_fields_the_new_type_has_are_kept():
  config = _locked(SYNTHETIC)
  config_utils.switch_type(config, 'model.fusion', 'crossattn')
  config.model.fusion.update(num_layers=4, dropout=0.2)
  config.model.fusion.direction = 'both'  # back at its default: gives way (joint has none)
  config_utils.switch_type(config, 'model.fusion', 'joint')
  assert config.model.fusion.to_dict() == fusion_lib.fusion_config(
      'joint', num_layers=4, dropout=0.2).to_dict()
  # A nested node set by the file (synthetic's 32 mel bands) stays when switching audio to AST.
  config = _locked(SYNTHETIC)
  config.model.encoders.audio.update(base_channels=6, extra_layers=5)  # LeNet defaults
  config_utils.switch_type(config, 'model.encoders.audio', 'ast')
  assert config.model.encoders.audio.type == 'ast'
  assert config.model.encoders.audio.features.n_mels == 32
  assert config.model.encoders.audio.depth == encoders_lib.config_fields(
      encoders_lib.AudioAST)['depth']


def test_explicit_fields_the_new_type_lacks_are_errors_naming_them():
  config = _locked(SYNTHETIC)
  config.model.fusion.presence_indicator = True  # as if set by the config file
  with pytest.raises(config_utils.ConfigError,
                     match=r"config.model.fusion.presence_indicator=True is set by the config "
                     r"file, but type 'late' of config.model.fusion has no such field"):
    config_utils.switch_type(config, 'model.fusion', 'late')
  config = _locked(SYNTHETIC)
  with pytest.raises(config_utils.ConfigError,
                     match=r"--config.model.fusion.presence_indicator: type 'late' of "
                     r"config.model.fusion has no field 'presence_indicator'; its fields: \[\]"):
    config_utils.switch_type(config, 'model.fusion', 'late', command_line=[
        'model.fusion.type', 'model.fusion.presence_indicator'])
  with pytest.raises(config_utils.ConfigError, match=r"--config.model.fusion.num_layrs: .*its "
                     r"fields: \[.*'num_layers'"):  # a typo in a field of the new type
    config_utils.switch_type(config, 'model.fusion', 'crossattn',
                             command_line=['model.fusion.num_layrs'])
  with pytest.raises(config_utils.ConfigError, match=r"fusion.type='attention': valid choices"):
    config_utils.switch_type(config, 'model.fusion', 'attention')
  assert config.model.fusion.type == 'concat'  # a refused switch changes nothing
  # Synthetic sets its LeNets' sizes, which a ViT does not have.
  with pytest.raises(config_utils.ConfigError) as e:
    config_utils.switch_type(config, 'model.encoders.image', 'vit')
  for field in ('base_channels=4', 'extra_layers=1'):
    assert f'config.model.encoders.image.{field} is set by the config file' in str(e.value)
  assert 'token_stage' not in str(e.value)  # at its default


def test_encoder_switch_and_overrides_in_process_as_the_sweep_runner_applies_them():
  config = _locked(AVMNIST)  # default LeNets
  config_utils.apply_overrides(config, {'model.encoders.image.type': 'vit',
                                        'model.encoders.image.depth': 1,
                                        'model.fusion.type': 'late', 'seed': 3})
  assert config.model.encoders.image.to_dict() == encoders_lib.encoder_config(
      'image', 'vit', depth=1).to_dict()
  assert config.model.fusion.to_dict() == {'type': 'late'} and config.seed == 3
  config_utils.validate(config)


def test_command_line_overrides_in_order():
  argv = ['main', '--config=x.py', '--config.a.b=1', '--config.c', 'd', '--noconfig.e',
          '--workdir=w', '--config.a.b=2']
  assert list(config_utils.command_line_overrides(argv).items()) == [
      ('c', 'd'), ('e', None), ('a.b', '2')]


_PARSE = '''
import json, sys
from crossmodal import config_utils, main
sys.argv = ['main'] + sys.argv[1:]
main.parse_flags(sys.argv)
print(json.dumps(config_utils.to_dict(main._CONFIG.value)['model']))
'''


def _parse(*args):
  return subprocess.run([sys.executable, '-c', _PARSE, '--workdir=/nonexistent', *args],
                        cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('args,check', [
    (['--config=experiments/synthetic.py', '--config.model.fusion.type=late'],
     lambda model: model['fusion'] == {'type': 'late'}),
    (['--config=experiments/synthetic.py', '--config.model.fusion.type=crossattn',
      '--config.model.fusion.num_layers=3'],
     lambda model: model['fusion'] == {**fusion_lib.fusion_config('crossattn').to_dict(),
                                       'num_layers': 3}),
    (['--config=experiments/avmnist.py', '--config.model.encoders.image.type=vit',
      '--config.model.encoders.image.patch_size=7'],
     lambda model: model['encoders']['image']['type'] == 'vit'
     and model['encoders']['image']['patch_size'] == 7
     and 'base_channels' not in model['encoders']['image']),
])
def test_main_parses_type_switches(args, check):
  r = _parse(*args)
  assert r.returncode == 0, r.stderr[-3000:]
  assert check(json.loads(r.stdout.strip().splitlines()[-1]))


def test_main_names_a_field_the_new_type_lacks():
  r = _parse('--config=experiments/synthetic.py', '--config.model.fusion.type=late',
             '--config.model.fusion.presence_indicator=True')
  assert r.returncode == 2
  assert ("error: --config.model.fusion.presence_indicator: type 'late' of config.model.fusion "
          "has no field 'presence_indicator'") in r.stderr
  assert 'Traceback' not in r.stderr
