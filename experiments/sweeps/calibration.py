r"""AV-MNIST recipe calibration: unimodal accuracy vs PCA components and audio SNR (1 seed).

  python scripts/ablate.py --config=experiments/avmnist.py \
      --sweep=experiments/sweeps/calibration.py --seeds=1 --root=runs/calibration

At the study's length (2000 steps), chooses the image variant and the SNR of
experiments/avmnist.py (VARIANT, SNR_DB): where image-only and audio-only accuracy sit near the
original AV-MNIST papers' 74.5% and 66%. An image-only model never sees the audio, so the image
rows use clean-audio builds (smaller); the audio rows use the 25%-energy PCA images. Results and
the choice: docs/results.md.
"""
from crossmodal.ablate import Variant

IMAGE_VARIANTS = ('pca', 'pca4', 'pca5', 'pca6', 'pca8')
SNRS_DB = ('-10', '-11', '-12', '-13')


def get_sweep():
  return ([Variant(f'image_{v}', f'modalities=image,variant={v},snr=clean')
           for v in IMAGE_VARIANTS]
          + [Variant(f'audio_snr{snr}', f'modalities=audio,variant=pca,snr={snr}') for snr in SNRS_DB])
