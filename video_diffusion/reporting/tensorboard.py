"""TensorBoard event files without TensorFlow: TFRecord framing and hand-encoded protobuf.

Only scalar summaries are written. The messages follow tensorflow/core/util/event.proto and
summary.proto: Event{wall_time=1 double, step=2 int64, file_version=3 string, summary=5},
Summary{value=1 repeated Value}, Value{tag=1 string, simple_value=2 float}.
"""

import itertools
import math
import os
import socket
import struct
import time


def _crc32c_table():
  table = []
  for i in range(256):
    crc = i
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return tuple(table)


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), table-driven; crc32c(b'123456789') == 0xE3069283."""
  crc = 0xFFFFFFFF
  table = _CRC_TABLE
  for byte in data:
    crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """The CRC as TFRecord stores it: rotated right by 15 bits plus a constant."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
  """One TFRecord: uint64 length, masked CRC of the length, data, masked CRC of the data."""
  header = struct.pack('<Q', len(data))
  return (
    header
    + struct.pack('<I', masked_crc32c(header))
    + data
    + struct.pack('<I', masked_crc32c(data))
  )


def _varint(value: int) -> bytes:
  value &= (1 << 64) - 1  # a negative int64 is encoded as its 64-bit two's complement
  out = bytearray()
  while value > 0x7F:
    out.append((value & 0x7F) | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
  return _varint(field << 3 | wire_type)


def _length_delimited(field: int, data: bytes) -> bytes:
  return _key(field, 2) + _varint(len(data)) + data


def _float32(value: float) -> bytes:
  try:
    return struct.pack('<f', value)
  except OverflowError:  # beyond float32's range: store +-inf, as a float32 cast would
    return struct.pack('<f', math.copysign(math.inf, value))


def encode_event(
  wall_time: float, step: int = 0, *, file_version: str | None = None, values=()
) -> bytes:
  """A serialized Event; `values` are (tag, float) pairs for its Summary."""
  out = _key(1, 1) + struct.pack('<d', wall_time)
  if step:
    out += _key(2, 0) + _varint(int(step))
  if file_version is not None:
    out += _length_delimited(3, file_version.encode())
  if values:
    summary = b''.join(
      _length_delimited(1, _length_delimited(1, tag.encode()) + _key(2, 5) + _float32(value))
      for tag, value in values
    )
    out += _length_delimited(5, summary)
  return out


class EventWriter:
  """Appends scalar events to a new `events.out.tfevents.*` file in `logdir`."""

  _unique = itertools.count()

  def __init__(self, logdir):
    os.makedirs(logdir, exist_ok=True)
    base = f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}'
    while True:
      self.path = os.path.join(os.fspath(logdir), f'{base}.{next(self._unique)}')
      try:
        self._file = open(self.path, 'xb')
        break
      except FileExistsError:
        continue
    self._write(encode_event(time.time(), file_version='brain.Event:2'))
    self.flush()

  def _write(self, event: bytes):
    self._file.write(tfrecord(event))

  def scalar(self, tag: str, value: float, step: int, wall_time: float | None = None):
    """Writes one scalar."""
    self.scalars({tag: value}, step, wall_time)

  def scalars(self, values: dict, step: int, wall_time: float | None = None):
    """Writes several scalars as one event at `step`."""
    if not values:
      return
    wall_time = time.time() if wall_time is None else wall_time
    pairs = [(str(tag), float(value)) for tag, value in values.items()]
    self._write(encode_event(wall_time, step, values=pairs))

  def flush(self):
    self._file.flush()

  def close(self):
    if not self._file.closed:
      self._file.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
