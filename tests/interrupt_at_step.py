"""Test driver: `python -m crossmodal.main` with a signal sent to itself right after a step.

  python tests/interrupt_at_step.py STEP SIGNAL [crossmodal.main flags...]

Installs `after_step` (train.train_and_evaluate's callback, called once the step's save has
started) so that tests interrupt a run at an exact step, without timing races and without a
test-only hook in the training loop: SIGKILL as a crash, SIGTERM as a preemption notice.
"""
import functools
import os
import signal
import sys


def _signal_after(target: int, name: str):
  def after_step(step: int) -> None:
    if step == target:
      os.kill(os.getpid(), getattr(signal, name))
  return after_step


if __name__ == '__main__':
  from crossmodal import main  # pylint: disable=g-import-not-at-top
  from crossmodal import train  # pylint: disable=g-import-not-at-top
  target, name = int(sys.argv[1]), sys.argv[2]
  train.train_and_evaluate = functools.partial(train.train_and_evaluate,
                                               after_step=_signal_after(target, name))
  sys.argv = [sys.argv[0], *sys.argv[3:]]
  main.run()
