"""A long stage's progress display: plain lines when the output is not a terminal, a bar when it is."""

from __future__ import annotations

import io
import re

from segray.progress import Board, Progress, Watcher, post


def test_plain_lines_say_done_total_rate_and_time_left() -> None:
    out = io.StringIO()
    shown = Progress("labelling run r1", 10, "frames", every=0, stream=out)
    shown.update(4, text="1 failed")
    shown.update(4, text="1 failed")  # nothing new: no second line
    shown.update(10, text="1 failed")
    shown.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    first = r"labelling run r1: 4/10 frames, 1 failed, [\d.]+ frames/s, ETA \d+:\d\d, 0:\d\d elapsed"
    assert re.fullmatch(first, lines[0]), lines
    assert lines[1].startswith("labelling run r1: 10/10 frames, 1 failed, ") and "ETA" not in lines[1]


def test_plain_lines_are_spaced_by_the_interval_and_the_end_is_always_printed() -> None:
    out = io.StringIO()
    with Progress("training", 100, "steps", every=3600, stream=out) as shown:
        for done in range(1, 101):
            shown.update(done, text=f"loss {1 / done:.4f}")
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == ["training: 1/100 steps", "training: 100/100 steps"]


def test_a_terminal_gets_a_bar_redrawn_in_place() -> None:
    out = io.StringIO()
    with Progress("training", 8, "steps", stream=out, terminal=True) as shown:
        for done in range(1, 9):
            shown.update(done, text="epoch 1/1")
    text = out.getvalue()
    assert "\r" in text and "8/8" in text and "epoch 1/1" in text
    assert text.count("\n") <= 1  # one line, redrawn


def test_watcher_renders_each_new_state_the_board_holds() -> None:
    board, seen = Board(), []
    with Watcher(board, seen.append, poll=3600):
        post(board, {"step": 1})
    assert seen == [{"step": 1}]  # read once more as the watcher stops
