"""Counts undecodable examples in the main process, logs each by id, stops the run past a limit.

It runs after grain's worker processes, so the count is the same for any data.num_workers.
"""

import logging

import grain

_log = logging.getLogger(__name__)
_FIRST_IDS = 5  # Ids quoted in the error message.
_PRIVATE = ('valid', 'id', 'error')


class TooManyBadExamplesError(RuntimeError):
  """More than data.max_skip_fraction of the examples could not be decoded."""


class BadExampleGuard(grain.IterDataset):
  """Drops (train) or masks (eval) invalid examples and strips the bookkeeping keys."""

  def __init__(self, parent: grain.IterDataset, *, drop: bool, max_skip_fraction: float,
               num_examples: int, what: str):
    super().__init__(parent)
    self._drop = drop
    self._max_skip_fraction = max_skip_fraction
    self._num_examples = num_examples
    self._what = what

  def __iter__(self):
    return _GuardIterator(self._parent.__iter__(), drop=self._drop,
                          max_skip_fraction=self._max_skip_fraction,
                          num_examples=self._num_examples, what=self._what)

  def __str__(self) -> str:
    return f'BadExampleGuard(drop={self._drop})'


class _GuardIterator(grain.DatasetIterator):
  """Checkpointable: its counters are part of the iterator state."""

  def __init__(self, parent, *, drop, max_skip_fraction, num_examples, what):
    super().__init__(parent)
    self._drop = drop
    self._max_skip_fraction = max_skip_fraction
    self._num_examples = num_examples
    self._what = what
    self._seen = 0
    self._bad = 0
    self._first_ids: list[str] = []

  def __next__(self):
    while True:
      example = next(self._parent)
      rid = example['id']
      if rid:  # '' marks eval padding, which is not an example.
        self._seen += 1
      if not example['valid']:
        self._skip(rid, example['error'])
        if self._drop:
          continue
      return {k: v for k, v in example.items() if k not in _PRIVATE}

  def _skip(self, rid: str, error: str) -> None:
    self._bad += 1
    if len(self._first_ids) < _FIRST_IDS:
      self._first_ids.append(rid)
    _log.warning('Skipping bad example %s of %s: %s', rid, self._what, error)
    # Until a full pass is seen, the budget is a fraction of the whole (per-process) split, so a
    # bad example early on does not stop the run; an all-bad split stops after one pass at most.
    budget = self._max_skip_fraction * max(self._seen, self._num_examples)
    nothing_good = self._drop and self._bad >= self._seen >= self._num_examples
    if self._bad > budget or nothing_good:
      raise TooManyBadExamplesError(
        f'{self._bad} of {self._seen} examples read from {self._what} could not be used, more '
        f'than data.max_skip_fraction={self._max_skip_fraction} of the {self._num_examples} '
        f'examples; first bad ids: {self._first_ids}. Fix or remove those files, or raise '
        'data.max_skip_fraction.')

  def get_state(self):
    return {'parent': self._parent.get_state(), 'seen': self._seen, 'bad': self._bad,
            'first_bad_ids': list(self._first_ids)}

  def set_state(self, state):
    self._parent.set_state(state['parent'])
    self._seen = state['seen']
    self._bad = state['bad']
    self._first_ids = list(state['first_bad_ids'])

  def __str__(self) -> str:
    return f'BadExampleGuardIterator(drop={self._drop})'
