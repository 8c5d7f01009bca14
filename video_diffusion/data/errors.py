"""Errors and warnings of the data pipeline."""

import warnings


class DataError(ValueError):
  """A dataset or loader setting that cannot be used; the message names the path or numbers."""


class UnreadableVideoWarning(UserWarning):
  """A video file of a folder dataset was skipped because it cannot be decoded."""


class ShortVideoWarning(UserWarning):
  """Videos of a folder dataset have fewer frames than a clip spans (they are padded)."""


def _plain(default):
  """formatwarning that prints the data warnings as one `warning: ...` line,
  without the source location (it is shown by grain's worker processes too)."""

  def formatwarning(message, category, *args, **kwargs):
    if issubclass(category, (UnreadableVideoWarning, ShortVideoWarning)):
      return f'warning: {message}\n'
    return default(message, category, *args, **kwargs)

  return formatwarning


warnings.formatwarning = _plain(warnings.formatwarning)
