"""mvfcnn.core.progress: periodic lines in logs (fake clock, non-tty stream), tqdm on a tty."""

from __future__ import annotations

import io

import pytest

from mvfcnn.core.progress import format_rate, format_seconds, progress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_non_tty_lines_every_interval_with_rate_and_eta() -> None:
    stream, clock = io.StringIO(), Clock()
    bar = progress(10, "fcn32s", stream=stream, interval=30, clock=clock)
    for step in range(10):
        clock.now += 12.5  # 12.5 s per iteration: a line every third iteration
        if step == 5:
            bar.set_postfix(loss="0.4312")  # before update: the line shows the newest value
        bar.update()
    bar.close()
    bar.close()  # idempotent
    assert stream.getvalue().splitlines() == [
        "fcn32s: 0/10 it",
        "fcn32s: 3/10 it (30%), 12.50 s/it, ETA 1m28s",
        "fcn32s: 6/10 it (60%), 12.50 s/it, ETA 50s, loss=0.4312",
        "fcn32s: 9/10 it (90%), 12.50 s/it, ETA 12s, loss=0.4312",
        "fcn32s: done 10/10 it in 2m05s (12.50 s/it), loss=0.4312",
    ]


def test_non_tty_iterable_resumed_and_fast() -> None:
    stream, clock = io.StringIO(), Clock()
    seen = []
    for item in progress(range(4), "predict", unit="window", stream=stream, interval=1.0,
                         clock=clock):
        clock.now += 0.25
        seen.append(item)
    assert seen == [0, 1, 2, 3]
    assert stream.getvalue().splitlines() == [
        "predict: 0/4 window",
        "predict: 4/4 window (100%), 4.00 window/s, ETA 0s",
        "predict: done 4/4 window in 1s (4.00 window/s)",
    ]
    stream = io.StringIO()
    bar = progress(100, "fcn16s", initial=40, stream=stream, interval=10, clock=clock)
    clock.now += 20
    bar.update(10)  # rate counts only this run's iterations
    assert stream.getvalue().splitlines()[-1] == "fcn16s: 50/100 it (50%), 2.00 s/it, ETA 1m40s"


def test_disabled_prints_nothing() -> None:
    stream = io.StringIO()
    with progress(5, "x", stream=stream, enabled=False, interval=0) as bar:
        bar.update(5)
    assert stream.getvalue() == ""


def test_tty_uses_tqdm() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    bar = progress(3, "classify", unit="image", stream=stream, interval=0)
    assert bar.tty and bar._bar is not None
    for _ in range(3):
        bar.update()
    bar.set_postfix(loss="0.1")
    assert bar._bar.n == 3
    bar.close()
    text = stream.getvalue()
    assert "classify" in text and "0/3" in text and "\r" in text  # a redrawn bar, not lines
    assert "done" not in text and "\n" not in text


def test_interval_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVFCNN_PROGRESS_INTERVAL", "5")
    assert progress(2, "x", stream=io.StringIO()).interval == 5.0


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (59.4, "59s"), (61, "1m01s"),
                                               (3725, "1h02m")])
def test_format_seconds(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text


def test_format_rate() -> None:
    assert format_rate(0, 5, "it") == "- it/s"
    assert format_rate(10, 4, "it") == "2.50 it/s"
    assert format_rate(2, 5, "tile") == "2.50 s/tile"
