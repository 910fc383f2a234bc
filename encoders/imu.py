"""IMU recordings -> the (6, 2000) array ImageBind's IMU branch takes.

The original published no IMU loader. Our rule (README, fidelity section): six channels,
accelerometer x, y, z then gyroscope x, y, z, as given (no unit conversion, no normalisation).
`.npy` of shape (6, N) or (N, 6), or CSV with N rows of 6 comma-separated numbers (one header
line allowed); a 6 x 6 array is read as rows = samples. N > 2000: the centre 2000 samples.
N < 2000: the last sample is repeated up to 2000 (a held sensor reading, unlike zeros, which
would fake a free fall on the accelerometer).
"""

from __future__ import annotations

import numpy as np

from encoders.arrays import is_npy, read_csv, read_npy
from encoders.errors import InvalidMedia
from encoders.limits import MediaLimits

CHANNELS = 6
SAMPLES = 2000


def channels_first(array: np.ndarray, field: str) -> np.ndarray:
    if array.ndim == 2 and array.shape[1] == CHANNELS:
        return array.T
    if array.ndim == 2 and array.shape[0] == CHANNELS:
        return array
    raise InvalidMedia(
        field, f"IMU data must be (N, 6) or (6, N): accelerometer xyz + gyroscope xyz; got {array.shape}"
    )


def fit_length(imu: np.ndarray) -> np.ndarray:
    n = imu.shape[1]
    if n >= SAMPLES:
        start = (n - SAMPLES) // 2
        return imu[:, start : start + SAMPLES]
    return np.pad(imu, ((0, 0), (0, SAMPLES - n)), mode="edge")


def load_imu(data: bytes, field: str, limits: MediaLimits) -> np.ndarray:
    if not data:
        raise InvalidMedia(field, "the file is empty")
    max_values = limits.max_imu_samples * CHANNELS
    array = (
        read_npy(data, field, max_values)
        if is_npy(data)
        else read_csv(data, field, limits.max_imu_samples, limits.max_csv_line_bytes)
    )
    imu = channels_first(array, field)
    if imu.shape[1] == 0:
        raise InvalidMedia(field, "the IMU recording has no samples")
    if not np.isfinite(imu).all():
        raise InvalidMedia(field, "the IMU data holds NaN or infinite values")
    return fit_length(imu).astype(np.float32)
