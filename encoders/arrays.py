"""Numeric arrays uploaded as `.npy` or CSV text (depth maps, IMU), read safely."""

from __future__ import annotations

import io

import numpy as np

from encoders.errors import InvalidMedia, MediaTooLarge, UnsupportedMediaType

NPY_MAGIC = b"\x93NUMPY"
HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def is_npy(data: bytes) -> bool:
    return data.startswith(NPY_MAGIC)


def read_npy(data: bytes, field: str, max_elements: int) -> np.ndarray:
    """A numeric .npy array; never unpickles (allow_pickle=False), size checked from the header."""
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        read_header = HEADER_READERS.get(version)
        if read_header is None:
            raise InvalidMedia(field, f".npy format version {version} is not supported (1.0 or 2.0)")
        shape, _, dtype = read_header(buf)  # the header only: no data is read yet
        if int(np.prod(shape)) > max_elements:
            raise MediaTooLarge(field, f"the array has shape {shape}, over the limit of {max_elements} values")
        if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
            raise InvalidMedia(field, f"the array has dtype {dtype}; a numeric (int or float) array is required")
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidMedia(field, f"the .npy file is truncated or corrupt ({exc})") from exc


def check_lines(data: bytes, field: str, max_lines: int, max_line_bytes: int) -> None:
    """Count the lines and measure the longest before any is decoded or split, at C speed: one
    20 MiB row, or millions of empty lines, is refused without being parsed."""
    raw = np.frombuffer(data, dtype=np.uint8)
    lines = int(np.count_nonzero(raw == ord("\n")))
    if lines > max_lines:
        raise MediaTooLarge(field, f"the CSV has {lines} lines, over the limit of {max_lines}")
    ends = np.append(np.flatnonzero((raw == ord("\n")) | (raw == ord("\r"))), len(data))  # CR too, as splitlines
    longest = int(np.diff(ends, prepend=-1).max()) - 1  # without its newline
    if longest > max_line_bytes:
        raise MediaTooLarge(field, f"the CSV has a line of {longest} bytes, over the limit of {max_line_bytes}")


def read_csv(data: bytes, field: str, max_rows: int, max_line_bytes: int = 4096) -> np.ndarray:
    """Comma-separated numbers, one sample per line; one header line of names is allowed."""
    # Blank lines are skipped below; as many again as rows (plus the header) are tolerated.
    check_lines(data, field, 2 * max_rows + 1, max_line_bytes)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnsupportedMediaType(field, "not a .npy array nor CSV text") from exc
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and not _is_numeric_row(lines[0]):
        lines = lines[1:]  # the header
    if not lines:
        raise InvalidMedia(field, "the CSV has no rows of numbers")
    if len(lines) > max_rows:
        raise MediaTooLarge(field, f"the CSV has {len(lines)} rows, over the limit of {max_rows}")
    try:
        rows = [[float(cell) for cell in line.split(",")] for line in lines]
        return np.array(rows, dtype=np.float64)
    except ValueError as exc:
        raise InvalidMedia(field, f"the CSV rows must be numbers with the same number of columns ({exc})") from exc


def _is_numeric_row(line: str) -> bool:
    try:
        [float(cell) for cell in line.split(",")]
    except ValueError:
        return False
    return True
