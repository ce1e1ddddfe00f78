r"""AV-MNIST recipe calibration: unimodal accuracy as the audio noise grows (1000 steps, 1 seed).

  python scripts/ablate.py --config=experiments/avmnist.py \
      --sweep=experiments/sweeps/calibration.py --seeds=1 --root=runs/calibration

Chooses the default SNR of experiments/avmnist.py (SNR_DB): the one where audio-only accuracy
sits near the original AV-MNIST papers' 66%. Results and the choice: docs/results.md.
"""
from crossmodal.ablate import Variant


def get_sweep():
  return ([Variant(f'audio_snr{snr}', f'modalities=audio,snr={snr},steps=1000')
           for snr in ('0', '-5', '-10')]
          + [Variant('image_pca', 'modalities=image,steps=1000')])
