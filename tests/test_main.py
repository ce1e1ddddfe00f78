"""Entry point and config checks: bad keys/types/values fail before anything is built, with the
valid choices; presets parse; the resolved config lands in the workdir; missing data explains
where to put it and how to run the synthetic config instead."""
import json
import os
import subprocess
import sys

import ml_collections
import pytest

from crossmodal import config_utils
from conftest import REPO, SYNTHETIC, synthetic_config


def _main(args, timeout=300, env=None):
  return subprocess.run([sys.executable, '-m', 'crossmodal.main', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, **(env or {})})


# ----------------------------------------------------------------------------- validate


def test_valid_config_passes():
  config_utils.validate(synthetic_config(), device_count=1, process_count=1)


@pytest.mark.parametrize('path,value,expected', [
    ('optim.name', 'adam', "valid choices: ('adamw', 'sgd', 'rmsprop')"),
    ('optim.schedule', 'linear', "valid choices: ('cosine', 'constant')"),
    ('optim.lr', -1.0, 'config.optim.lr=-1.0: must be a positive number'),
    ('optim.accum_steps', 0, 'config.optim.accum_steps=0: must be an int >= 1'),
    ('optim.momentum', 1.5, 'must be in [0, 1)'),
    ('train.parallel', 'shard_map', "valid choices: ('jit', 'pmap')"),
    ('train.sync_every_step', 'yes', "valid choices: ('auto', 'on', 'off')"),
    ('train.dtype', 'float16', "valid choices: ('float32', 'bfloat16')"),
    ('train.num_steps', 0, 'config.train.num_steps=0: must be a positive int'),
    ('train.best_metric', 3, 'config.train.best_metric=3: must be of type str'),
    ('data.global_batch_size', -8, 'must be a positive int'),
    ('model.modalities', ('image', 'smell'), "valid choices: ('image', 'audio', 'text')"),
])
def test_invalid_values_name_option_and_choices(path, value, expected):
  config = synthetic_config()
  node = config
  *parents, leaf = path.split('.')
  for p in parents:
    node = node[p]
  with node.ignore_type():
    node[leaf] = value
  with pytest.raises(config_utils.ConfigError) as e:
    config_utils.validate(config, device_count=1, process_count=1)
  assert f'config.{path}' in str(e.value)
  assert expected in str(e.value)


def test_batch_must_divide_device_and_process_count():
  config = synthetic_config()
  config.data.global_batch_size = 12
  with pytest.raises(config_utils.ConfigError, match=r'global_batch_size=12 must be divisible '
                     r'by the device count \(8\)'):
    config_utils.validate(config, device_count=8, process_count=1)
  config_utils.validate(config, device_count=4, process_count=2)
  config.data.eval_batch_size = 5
  with pytest.raises(config_utils.ConfigError, match='eval_batch_size=5 must be divisible by '
                     r'the process count \(2\)'):
    config_utils.validate(config, device_count=1, process_count=2)


def test_all_errors_reported_at_once_and_missing_keys_named():
  config = synthetic_config()
  config.optim.name = 'adam'
  config.train.parallel = 'x'
  del config.train['log_every']
  with pytest.raises(config_utils.ConfigError) as e:
    config_utils.validate(config)
  msg = str(e.value)
  assert 'config.optim.name' in msg and 'config.train.parallel' in msg
  assert 'config.train.log_every is missing' in msg


def test_data_cache_is_a_bool_and_not_combined_with_workers():
  config = synthetic_config()
  config.data.cache = True
  config_utils.validate(config)
  config.data.worker_count = 2
  with pytest.raises(config_utils.ConfigError, match='cache=True with config.data.worker_count=2'):
    config_utils.validate(config)
  config.data.worker_count = 0
  with config.data.ignore_type():
    config.data.cache = 'yes'
  with pytest.raises(config_utils.ConfigError,
                     match='config.data.cache=.yes.: must be True or False'):
    config_utils.validate(config)


def test_num_steps_multiple_of_accumulation():
  config = synthetic_config()
  config.optim.accum_steps = 3
  config.train.num_steps = 10
  with pytest.raises(config_utils.ConfigError, match='multiple of config.optim.accum_steps=3'):
    config_utils.validate(config)


# ----------------------------------------------------------------------------- parse_arg


def test_parse_arg_types_and_errors():
  out = config_utils.parse_arg('fusion=crossattn,steps=7,lr=0.5,bf16=true,mods=image+audio',
                               fusion='concat', steps=1, lr=1.0, bf16=False, mods=('image',))
  assert out.fusion == 'crossattn' and out.steps == 7 and out.lr == 0.5 and out.bf16 is True
  assert out.mods == ('image', 'audio')
  assert config_utils.parse_arg(None, fusion='concat').fusion == 'concat'
  with pytest.raises(config_utils.ConfigError, match=r"unknown config argument 'fuse'; valid "
                     r"keys: \['fusion', 'steps'\]"):
    config_utils.parse_arg('fuse=x', fusion='concat', steps=1)
  with pytest.raises(config_utils.ConfigError, match='steps=.*expected int'):
    config_utils.parse_arg('steps=many', steps=1)
  with pytest.raises(config_utils.ConfigError, match='not key=value'):
    config_utils.parse_arg('crossattn', fusion='concat')


def test_check_overrides_lists_valid_fields():
  config = ml_collections.ConfigDict({'optim': {'lr': 1.0, 'name': 'sgd'}})
  config_utils.check_overrides(config, ['optim.lr'])
  with pytest.raises(config_utils.ConfigError,
                     match=r"config.optim has no field 'lrr'; valid fields of config.optim: "
                     r"\['lr', 'name'\]"):
    config_utils.check_overrides(config, ['optim.lrr'])


def test_write_config_roundtrip(tmp_path):
  config = synthetic_config()
  path = config_utils.write_config(config, str(tmp_path))
  data = json.load(open(path))
  assert data['optim']['lr'] == config.optim.lr
  assert data['model']['modalities'] == list(config.model.modalities)


# ----------------------------------------------------------------------------- main (CLI)


def test_cli_unknown_override_key_fails_fast_with_valid_fields(tmp_path):
  r = _main([f'--config={SYNTHETIC}', f'--workdir={tmp_path}/w', '--config.optim.lrr=3'])
  assert r.returncode != 0
  assert "config.optim has no field 'lrr'" in r.stderr
  assert "'lr'" in r.stderr and 'Traceback' not in r.stderr
  assert not os.path.exists(tmp_path / 'w')  # nothing built


def test_cli_wrong_type_and_out_of_range(tmp_path):
  r = _main([f'--config={SYNTHETIC}', f'--workdir={tmp_path}/w',
             '--config.optim.accum_steps=1.5'])
  assert r.returncode != 0 and 'config.optim.accum_steps' in r.stderr
  r = _main([f'--config={SYNTHETIC}', f'--workdir={tmp_path}/w', '--config.optim.name=adam'])
  assert r.returncode != 0
  assert "valid choices: ('adamw', 'sgd', 'rmsprop')" in r.stderr
  assert 'Traceback' not in r.stderr
  assert not os.path.exists(tmp_path / 'w')


def test_cli_bad_preset_argument(tmp_path):
  r = _main([f'--config={SYNTHETIC}:fusoin=concat', f'--workdir={tmp_path}/w'])
  assert r.returncode != 0
  assert "unknown config argument 'fusoin'" in r.stderr and 'valid keys' in r.stderr


def test_cli_train_and_eval_writes_resolved_config(tmp_path):
  workdir = tmp_path / 'w'
  # --mode=eval runs the model the training run compiled: it loads those XLA programs from a
  # persistent compilation cache in tmp_path (as test_ablate's runs do) instead of compiling.
  cache = {'JAX_COMPILATION_CACHE_DIR': str(tmp_path / 'jax_cache'),
           'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'}
  r = _main([f'--config={SYNTHETIC}:size=tiny,steps=4', f'--workdir={workdir}',
             '--config.optim.lr=0.002', '--config.evaluators.validation.every=2'], env=cache)
  assert r.returncode == 0, r.stderr[-3000:]
  config = json.load(open(workdir / 'config.json'))
  assert config['optim']['lr'] == 0.002 and config['train']['num_steps'] == 4
  assert 'trained to step 4: test: {' in r.stdout
  assert 'evaluated the best checkpoint: validation: {' in r.stdout
  r = _main([f'--config={SYNTHETIC}:size=tiny,steps=4', f'--workdir={workdir}', '--mode=eval',
             '--checkpoint=2'], env=cache)
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'evaluated the 2 checkpoint: test: {' in r.stdout


def test_cli_eval_without_checkpoint_says_train_first(tmp_path):
  r = _main([f'--config={SYNTHETIC}:size=tiny', f'--workdir={tmp_path}/w', '--mode=eval'])
  assert r.returncode == 2
  assert 'No checkpoint' in r.stderr and '--mode=train_and_eval' in r.stderr


def test_cli_second_run_on_locked_workdir_refuses(tmp_path):
  from crossmodal import checkpointing  # pylint: disable=g-import-not-at-top
  with checkpointing.WorkdirLock(str(tmp_path / 'w')):
    r = _main([f'--config={SYNTHETIC}:size=tiny', f'--workdir={tmp_path}/w'])
  assert r.returncode == 2
  assert 'is in use by another run' in r.stderr and f'pid {os.getpid()}' in r.stderr


_NO_DATA_NO_INTERNET = '''
import sys
from pathlib import Path
from crossmodal import main
from crossmodal.data import datasets
from crossmodal.data import sources
shared = Path(sys.argv[1])
sources.default_shared_dir = lambda: shared  # no shared sources on this "machine"
datasets._internet_available = lambda *a, **k: False  # and no internet
sys.argv = ['main', '--config=experiments/avmnist.py', '--workdir=' + sys.argv[2],
            '--config.data.data_dir=' + sys.argv[3]]
main.run()
'''


def test_cli_without_sources_or_internet_says_where_to_put_data(tmp_path, monkeypatch):
  monkeypatch.delenv('CROSSMODAL_MANUAL_DIR', raising=False)
  missing = tmp_path / 'no_such_dir'
  r = subprocess.run([sys.executable, '-c', _NO_DATA_NO_INTERNET, str(missing),
                      str(tmp_path / 'w'), str(tmp_path / 'tfds')], cwd=REPO,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 2
  assert f'put the raw sources at {missing}' in r.stderr
  assert 'mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz' in r.stderr
  assert 'python -m crossmodal.main --config=experiments/synthetic.py' in r.stderr
  assert not (tmp_path / 'tfds' / 'avmnist').exists() or not any(
      (tmp_path / 'tfds' / 'avmnist').rglob('*.array_record*'))


def test_cli_bad_manual_dir_explains(tmp_path):
  r = _main(['--config=experiments/avmnist.py', f'--workdir={tmp_path}/w',
             f'--config.data.manual_dir={tmp_path}/nowhere',
             f'--config.data.data_dir={tmp_path}/tfds'])
  assert r.returncode == 2
  assert f'{tmp_path}/nowhere does not exist' in r.stderr
  assert 'experiments/synthetic.py' in r.stderr
