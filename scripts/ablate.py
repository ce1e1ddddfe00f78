r"""Sweep runner (see crossmodal/ablate.py):

  python scripts/ablate.py --config=experiments/avmnist.py --sweep=experiments/sweeps/fusion.py \
      --seeds=3 --root=runs/fusion [--dry_run] [--parallel=2] [--only=concat,crossattn] \
      [--report_only] [--metrics=recall@5,median_rank]
"""
import sys

from crossmodal import ablate

if __name__ == '__main__':
  sys.exit(ablate.main())
