"""IMU: our documented (6, 2000) rule, against a reference written here."""

from __future__ import annotations

import io

import numpy as np
import pytest

from encoders.errors import InvalidMedia, MediaTooLarge, UnsupportedMediaType
from encoders.imu import load_imu
from encoders.limits import MediaLimits

pytestmark = pytest.mark.unit

LIMITS = MediaLimits()


def reference(data: bytes) -> np.ndarray:
    """(N, 6) or (6, N); centre 2000 samples when longer, the last sample repeated when shorter."""
    if data.startswith(b"\x93NUMPY"):
        arr = np.load(io.BytesIO(data))
    else:
        lines = data.decode().strip().splitlines()
        if not lines[0][0].isdigit() and lines[0][0] not in "-.":
            lines = lines[1:]
        arr = np.array([[float(v) for v in line.split(",")] for line in lines])
    imu = arr.T if arr.shape[1] == 6 else arr
    n = imu.shape[1]
    if n >= 2000:
        return imu[:, (n - 2000) // 2 : (n - 2000) // 2 + 2000].astype(np.float32)
    tail = np.repeat(imu[:, -1:], 2000 - n, axis=1)
    return np.concatenate([imu, tail], axis=1).astype(np.float32)


def recording(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None] / 200.0
    return np.sin(t * np.arange(1, 7)) + 0.1 * rng.standard_normal((n, 6)) + np.array([0, 0, 9.81, 0, 0, 0])


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def csv(array: np.ndarray, header: bool = True) -> bytes:
    rows = "\n".join(",".join(repr(float(v)) for v in row) for row in array)
    return (("acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z\n" if header else "") + rows + "\n").encode()


@pytest.mark.parametrize(
    "data",
    [
        npy(recording(2000)),
        npy(recording(1500, 1).T.copy()),
        npy(recording(2600, 2).astype(np.float32)),
        csv(recording(1500, 3)),
        csv(recording(2600, 4), header=False),
        csv(recording(2000, 5)),
    ],
    ids=["npy-2000", "npy-6xN-1500", "npy-2600", "csv-1500", "csv-2600-noheader", "csv-2000"],
)
def test_matches_reference(data: bytes) -> None:
    out = load_imu(data, "imu[0]", LIMITS)
    assert out.shape == (6, 2000) and out.dtype == np.float32
    np.testing.assert_array_equal(out, reference(data))


def test_longer_takes_the_centre_and_shorter_holds_the_last_sample() -> None:
    ramp = np.repeat(np.arange(2600, dtype=np.float64)[:, None], 6, axis=1)
    out = load_imu(npy(ramp), "imu[0]", LIMITS)
    assert out[0, 0] == 300 and out[0, -1] == 2299
    out = load_imu(npy(ramp[:10]), "imu[0]", LIMITS)
    assert out[0, 9] == 9 and (out[:, 10:] == 9).all()


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (b"", InvalidMedia, "empty"),
        (b"\xff\xfe\x00binary", UnsupportedMediaType, "not a .npy array nor CSV"),
        (b"a,b,c\n", InvalidMedia, "no rows"),
        (b"1,2,3\n4,5\n", InvalidMedia, "same number of columns"),
        (csv(recording(10))[:-30] + b"x,y\n", InvalidMedia, "numbers"),
        (npy(np.zeros((5, 7))), InvalidMedia, "(N, 6) or (6, N)"),
        (npy(np.full((20, 6), np.nan)), InvalidMedia, "NaN"),
        (npy(np.zeros((0, 6))), InvalidMedia, "no samples"),
        (npy(recording(5000)), MediaTooLarge, "over the limit"),
        (csv(recording(5000)), MediaTooLarge, "over the limit"),
    ],
)
def test_bad_imu_files(data: bytes, error: type, words: str) -> None:
    with pytest.raises(error) as info:
        load_imu(data, "imu[0]", MediaLimits(max_imu_samples=4000))
    assert str(info.value).startswith("imu[0]: ") and words in str(info.value)
