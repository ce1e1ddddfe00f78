"""AV-MNIST tasks whose answer depends on which part of one modality matches which part of the other.

On AV-MNIST proper (`digit`: one image and one recording of the same digit) either modality alone
names the class, so pooled-vector fusions do as well as attention. These tasks are built from the
same sources, splits and recordings, but neither modality alone says anything about the label:

  grid2 / grid3  a 2x2 (3x3) grid of distinct MNIST digits and one spoken digit that appears in
                 it; the label is the cell (row-major) that shows the spoken digit. Chance 25% / 11%.
  match          one MNIST digit and one spoken digit, the same digit or not (balanced); the
                 label is 'same' or 'different'. Chance 50%.
  seq2 / seq3    two (three) digits written left to right and the same digits spoken one after
                 the other (1 s each), except that at most one position disagrees; the label is
                 the position that disagrees (1..n) or 0 when none does. Chance 33% / 25%.

Every digit is drawn uniformly (balanced over a split where it decides a label) and shown by a
random MNIST image of that digit from the split; recordings come from the split's own recordings,
balanced per digit (avmnist.pair_recordings). So neither modality alone carries information about
the label: given the image (any set of digits) or the audio, every class is equally likely. All
draws are made for the whole split (as many examples as it has MNIST images) from one seeded
Generator per (pairing seed, split, task), so a subset build is a prefix of the full one and no
image or recording crosses splits.
"""

from __future__ import annotations

import dataclasses

import numpy as np

DIGIT = "digit"  # AV-MNIST proper (crossmodal/data/avmnist.py)
TASKS = (DIGIT, "grid2", "grid3", "match", "seq2", "seq3")
_TASK_CODES = {task: code for code, task in enumerate(TASKS)}  # mixed into the draw seeds
DIGIT_SIDE = 28  # MNIST digits are 28x28
NUM_DIGITS = 10


@dataclasses.dataclass(frozen=True)
class Layout:
    """Shape of a task's examples: a rows x cols grid of digits, `clips` spoken digits."""

    rows: int
    cols: int
    clips: int
    class_names: tuple[str, ...]

    @property
    def cells(self) -> int:
        return self.rows * self.cols

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.rows * DIGIT_SIDE, self.cols * DIGIT_SIDE, 1)


def layout(task: str) -> Layout:
    """The Layout of a task other than `digit` (ValueError names the choices)."""
    if task.startswith("grid") and task in TASKS:
        k = int(task[4:])
        return Layout(k, k, 1, tuple(f"r{r}c{c}" for r in range(k) for c in range(k)))
    if task == "match":
        return Layout(1, 1, 1, ("different", "same"))
    if task.startswith("seq") and task in TASKS:
        n = int(task[3:])
        return Layout(1, n, n, ("none",) + tuple(f"position{p}" for p in range(1, n + 1)))
    raise ValueError(f"Unknown AV-MNIST task {task!r}; valid: {', '.join(TASKS[1:])} (or {DIGIT!r}).")


def chance(task: str) -> float:
    """Accuracy of a constant guess (labels are balanced)."""
    return 1.0 / (NUM_DIGITS if task == DIGIT else len(layout(task).class_names))


def describe(task: str) -> str:
    layout(task)  # names the choices
    return {
        "grid2": "a 2x2 grid of distinct digits and one spoken digit from it; label: its cell",
        "grid3": "a 3x3 grid of distinct digits and one spoken digit from it; label: its cell",
        "match": "one written and one spoken digit; label: same or different",
        "seq2": "2 written and 2 spoken digits, at most one position differs; label: which (0 = none)",
        "seq3": "3 written and 3 spoken digits, at most one position differs; label: which (0 = none)",
    }[task]


@dataclasses.dataclass(frozen=True)
class Draw:
    """What the examples of a split are made of (row i: example i).

    image_rows: [N, cells] rows of the split's image array, cell by cell (row-major).
    spoken: [N, clips] the spoken digits, in order.
    label: [N].
    """

    image_rows: np.ndarray
    spoken: np.ndarray
    label: np.ndarray


def draw(task: str, labels: np.ndarray, seed: int, split_code: int) -> Draw:
    """Seeded choices for all len(labels) examples of a split whose MNIST digits are `labels`."""
    lay = layout(task)
    n = len(labels)
    rng = np.random.default_rng([seed, split_code, _TASK_CODES[task]])
    examples = np.arange(n)
    if task.startswith("grid"):
        spoken = rng.permutation(np.resize(np.arange(NUM_DIGITS), n))
        target = rng.permutation(np.resize(np.arange(lay.cells), n))
        keys = rng.random((n, NUM_DIGITS))
        keys[examples, spoken] = 2.0  # never among the distractors
        distractors = np.argsort(keys, axis=1)[:, : lay.cells - 1]  # distinct, uniform
        digits = np.concatenate([spoken[:, None], distractors], axis=1)
        # cell c shows column 0 (the spoken digit) if c is the target, else the next distractor
        c = np.arange(lay.cells)[None, :]
        column = np.where(c == target[:, None], 0, np.where(c < target[:, None], c + 1, c))
        digits = np.take_along_axis(digits, column, axis=1)
        return Draw(_images_of(digits, labels, rng), spoken[:, None], target)
    if task == "match":
        shown = rng.permutation(np.resize(np.arange(NUM_DIGITS), n))
        same = rng.permutation(np.resize(np.array([False, True]), n))
        other = (shown + rng.integers(1, NUM_DIGITS, n)) % NUM_DIGITS  # uniform over the others
        spoken = np.where(same, shown, other)
        return Draw(_images_of(shown[:, None], labels, rng), spoken[:, None], same.astype(np.int64))
    # seq<n>: written digits i.i.d. uniform; the disagreeing position, if any, says another one
    label = rng.permutation(np.resize(np.arange(lay.clips + 1), n))
    written = rng.integers(0, NUM_DIGITS, (n, lay.clips))
    spoken = written.copy()
    wrong = np.flatnonzero(label > 0)
    shift = rng.integers(1, NUM_DIGITS, n)[wrong]
    spoken[wrong, label[wrong] - 1] = (written[wrong, label[wrong] - 1] + shift) % NUM_DIGITS
    return Draw(_images_of(written, labels, rng), spoken, label)


def _images_of(digits: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each entry of `digits` [N, k], a uniformly drawn row of `labels` with that digit."""
    u = rng.random(digits.shape)
    rows = np.empty(digits.shape, np.int64)
    for d in range(NUM_DIGITS):
        pool = np.flatnonzero(labels == d)
        at = digits == d
        rows[at] = pool[np.minimum((u[at] * len(pool)).astype(np.int64), len(pool) - 1)]
    return rows


def compose(digit_images: np.ndarray, lay: Layout) -> np.ndarray:
    """[cells, 28, 28] digits (row-major) -> one [rows*28, cols*28, 1] image."""
    s = DIGIT_SIDE
    grid = digit_images.reshape(lay.rows, lay.cols, s, s).transpose(0, 2, 1, 3)
    return grid.reshape(lay.rows * s, lay.cols * s, 1)


def cell_of_token(token_rows: int, token_cols: int, lay: Layout) -> np.ndarray:
    """[cells, token_rows * token_cols] share of each token's tile that lies in each cell.

    A feature map of h x w positions is taken to tile the image evenly; a position whose tile
    straddles a cell border counts towards both cells in proportion (7x7 tokens of a 2x2 grid:
    the middle row and column are split in half). Rows of the result sum to the cell's area in
    tokens, columns to 1.
    """
    def overlap(n_tokens, n_cells):  # [n_cells, n_tokens], 1-D interval overlaps
        t0 = np.arange(n_tokens)[None, :] / n_tokens
        c0 = np.arange(n_cells)[:, None] / n_cells
        inter = np.minimum(t0 + 1 / n_tokens, c0 + 1 / n_cells) - np.maximum(t0, c0)
        return np.clip(inter, 0, None) * n_tokens

    rows, cols = overlap(token_rows, lay.rows), overlap(token_cols, lay.cols)
    return np.einsum("ai,bj->abij", rows, cols).reshape(lay.cells, token_rows * token_cols)
