"""Errors and warnings of the data pipeline."""


class DataError(ValueError):
  """A dataset or loader setting that cannot be used; the message names the path or numbers."""


class UnreadableVideoWarning(UserWarning):
  """A video file of a folder dataset was skipped because it cannot be decoded."""
