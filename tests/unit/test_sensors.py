"""Logger CSV files to windows: header, timestamps, several channels, labels, appends."""

import os

import numpy as np
import pytest

from ftte.sensors import UNLABELLED, SensorReader, SensorSource, read_windows

CHANNELS = ["ax", "ay", "az", "gx", "gy", "gz"]


def write_log(path, rows, start=0, label=True, header=True):
    """A 6-channel log: channel c of row r holds r * 10 + c, so windows can be checked."""
    lines = []
    if header:
        lines.append(",".join(["time", *CHANNELS, *(["state"] if label else [])]))
    for r in range(start, start + rows):
        values = [f"{r * 10 + c}" for c in range(len(CHANNELS))]
        lines.append(
            ",".join(
                [
                    f"2026-11-27T01:{r // 60:02d}:{r % 60:02d}Z",
                    *values,
                    *([str(r % 3)] if label else []),
                ]
            )
        )
    path.write_text("\n".join(lines) + "\n")


def test_a_six_channel_log_with_header_and_timestamps_becomes_channel_first_windows(tmp_path):
    log = tmp_path / "log.csv"
    write_log(log, rows=10)
    data = read_windows(log, SensorSource(log, window=4, stride=2, timestamp="time", label="state"))
    assert data.x.shape == (4, 6, 4) and data.x.dtype == np.float32  # starts 0, 2, 4, 6
    assert data.x[1, 2].tolist() == [22, 32, 42, 52]  # window from row 2, channel az
    assert data.y.tolist() == [3 % 3, 5 % 3, 7 % 3, 9 % 3]  # the label of each last row


def test_chosen_channels_in_their_order_and_unlabelled_data(tmp_path):
    log = tmp_path / "log.csv"
    write_log(log, rows=6, label=False)
    source = SensorSource(log, window=3, channels=["gz", "ax"], timestamp="time")
    data = read_windows(log, source)
    assert data.x.shape == (2, 2, 3)
    assert data.x[0, 0].tolist() == [5, 15, 25] and data.x[0, 1].tolist() == [0, 10, 20]
    assert data.y.tolist() == [UNLABELLED, UNLABELLED]


def test_rows_appended_while_running_are_in_the_next_read_and_a_partial_line_waits(tmp_path):
    log = tmp_path / "log.csv"
    write_log(log, rows=4)
    reader = SensorReader(SensorSource(log, window=4, timestamp="time", label="state"))
    assert len(reader.read()) == 1
    with log.open("a") as f:
        f.write("2026-11-27T02:00:00Z,40,41,42,43,44,45,1\n" * 4)
        f.write("2026-11-27T02:00:01Z,50,51")  # the logger is mid-line
    assert len(reader.read()) == 2


def test_a_folder_is_read_newest_first_up_to_the_sample_cap(tmp_path):
    for i, name in enumerate(["old.csv", "mid.csv", "new.csv"]):
        write_log(tmp_path / name, rows=4, start=100 * i)
        os.utime(tmp_path / name, ns=(10**18 + i * 10**9, 10**18 + i * 10**9))
    source = SensorSource(tmp_path, window=2, timestamp="time", label="state", max_samples=3)
    data = SensorReader(source).read()
    # new.csv's two windows and mid.csv's newest one; oldest first; no window across files.
    assert data.x[:, 0, 0].tolist() == [1020, 2000, 2020]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"label": "target"}, "no column 'target' for data.sensors.label"),
        ({"channels": ["ax", "bx"]}, "no column 'bx' of data.sensors.channels"),
        ({"label": "state"}, "not a number"),  # the timestamp column taken as a channel
    ],
)
def test_a_file_that_does_not_fit_the_source_names_the_field(tmp_path, source, message):
    log = tmp_path / "log.csv"
    write_log(log, rows=4)
    with pytest.raises(ValueError, match=message):
        read_windows(log, SensorSource(log, window=2, **source))


def test_a_log_shorter_than_a_window_says_so(tmp_path):
    log = tmp_path / "log.csv"
    write_log(log, rows=2)
    with pytest.raises(ValueError, match="no complete window of 4 rows"):
        SensorReader(SensorSource(log, window=4, timestamp="time", label="state")).read()
