"""ecoserve/cli/progress.py: plain lines off a terminal (throttled, never a
carriage return), a redrawn bar on one, --quiet, delay, and log records that
never glue onto the bar. Clocks and terminals are injected."""

from __future__ import annotations

import io
import logging

import click
import pytest
from click.testing import CliRunner

from ecoserve.cli.progress import LINE_HEARTBEAT_S, LINE_INTERVAL_S, Progress, elapsed, quiet_option


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make(*, tty=False, quiet=False, delay=0.0, total=10, unit="requests", desc="bench"):
    out, clock = io.StringIO(), Clock()
    p = Progress(desc, unit, total, quiet=quiet, delay=delay, stream=out, tty=tty, clock=clock)
    return p, out, clock


def lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def test_plain_lines_first_at_once_then_at_most_every_interval():
    p, out, clock = make()
    p(0, None, "sent 1")
    assert lines(out) == ["bench: 0/10 requests, sent 1 [0.0s]"]
    for k in range(1, 5):  # changes, but within the interval: nothing
        clock.t += 1.0
        p(k, None, f"sent {k + 1}")
    assert len(lines(out)) == 1
    clock.t += LINE_INTERVAL_S - 4.0  # 5 s after the first line
    p(5, None, "sent 7")
    assert lines(out)[-1] == "bench: 5/10 requests, sent 7 [5.0s]"
    assert "\r" not in out.getvalue()


def test_an_unchanged_state_is_repeated_only_as_a_heartbeat():
    p, out, clock = make()
    p(3, None, "waiting")
    clock.t += LINE_INTERVAL_S + 1
    p(3, None, "waiting")  # same state past the interval: still nothing
    assert len(lines(out)) == 1
    clock.t = 100.0 + LINE_HEARTBEAT_S
    p(3, None, "waiting")
    assert len(lines(out)) == 2 and lines(out)[-1] == f"bench: 3/10 requests, waiting [{LINE_HEARTBEAT_S:.0f}s]"


def test_close_writes_the_last_state_once():
    p, out, clock = make()
    p(1, None, "a")
    clock.t += 2
    p(10, None, "all done")  # throttled away...
    assert len(lines(out)) == 1
    p.close()  # ...but the end is always written
    p.close()  # idempotent
    assert lines(out) == ["bench: 1/10 requests, a [0.0s]", "bench: 10/10 requests, all done [2.0s]"]
    p(11, None, "late")  # after close: ignored
    assert len(lines(out)) == 2


def test_close_does_not_repeat_the_line_just_written_nor_report_a_silent_job():
    p, out, _ = make()
    p(10, None, "x")
    p.close()
    assert len(lines(out)) == 1
    q, out2, _ = make()
    q.close()  # never reported anything (e.g. serve attaching, no engine to wait for)
    assert out2.getvalue() == ""


def test_unknown_total_counts_alone():
    p, out, _ = make(total=None, unit="runs", desc="simulating")
    p(7, None, "")
    assert lines(out) == ["simulating: 7 runs [0.0s]"]


def test_quiet_writes_nothing_even_at_close():
    for tty in (False, True):
        p, out, clock = make(quiet=True, tty=tty)
        p(1, None, "x")
        clock.t += 100
        p(5, None, "y")
        p.close()
        assert out.getvalue() == ""
        assert p.done == 5  # it still keeps count


def test_delay_hides_quick_jobs_and_shows_long_ones():
    p, out, clock = make(delay=2.0)
    p(5, None, "")
    clock.t += 1.0
    p.close()
    assert out.getvalue() == ""  # done within the delay: nothing at all
    p, out, clock = make(delay=2.0)
    p(1, None, "")
    clock.t += 2.5
    p(4, None, "")
    p.close(detail="done")
    assert lines(out) == ["bench: 4/10 requests [2.5s]", "bench: 4/10 requests, done [2.5s]"]


def test_terminal_bar_redrawn_in_place_throttled_and_left_on_screen(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    p, out, clock = make(tty=True)
    p(5, None, "sent 6, failed 1")
    first = "bench [##########----------] 5/10 requests [0.0s] sent 6, failed 1"
    assert out.getvalue() == "\r" + first
    clock.t += 0.05
    p(6, None, "sent 7")  # within the refresh interval: not drawn
    assert out.getvalue().count("\r") == 1
    clock.t += 0.25
    p(7, None, "")  # shorter than the line on screen: padded to blank the rest
    second = "bench [##############------] 7/10 requests [0.3s]"
    assert out.getvalue().split("\r")[-1] == second + " " * (len(first) - len(second))
    p(10, None, "")  # throttled...
    assert out.getvalue().count("\r") == 2
    p.close()  # ...the end is drawn anyway, and the line left on screen
    assert out.getvalue().endswith("\rbench [####################] 10/10 requests [0.3s]\n")
    assert out.getvalue().count("\n") == 1


def test_terminal_line_fits_the_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    p, out, _ = make(tty=True)
    p(1, None, "a long detail that would wrap the terminal line")
    assert len(out.getvalue().lstrip("\r")) == 39


def test_log_records_clear_the_bar_first_and_it_comes_back():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    root = logging.getLogger()
    root.addHandler(handler)
    log = logging.getLogger("ecoserve.test-progress")
    old = log.level
    log.setLevel(logging.INFO)
    try:
        clock = Clock()
        p = Progress("engines", "healthy", 2, stream=out, tty=True, clock=clock)
        p(0, None, "waiting for engine-0")
        drawn = out.getvalue()
        log.info("engine-0 runs on node A")
        after = out.getvalue()[len(drawn):]
        assert after.startswith("\r" + " " * (len(drawn) - 1) + "\r" + "engine-0 runs on node A\n")
        p(1, None, "waiting for engine-1")  # redrawn at once, whatever the refresh interval
        assert out.getvalue().endswith("\rengines [##########----------] 1/2 healthy [0.0s] waiting for engine-1")
        p.close()
        n = len(out.getvalue())
        log.info("after the bar")  # the filter is gone: written as is
        assert out.getvalue()[n:] == "after the bar\n"
        assert not handler.filters
    finally:
        root.removeHandler(handler)
        log.setLevel(old)


def test_a_broken_stream_stops_progress_not_the_job():
    class Broken(io.StringIO):
        def write(self, s):
            raise BrokenPipeError

    p = Progress("x", total=3, stream=Broken(), tty=False)
    p(1, None, "")
    p.close()
    assert not p.enabled


@pytest.mark.parametrize(("s", "text"), [(0.04, "0.0s"), (9.94, "9.9s"), (42.7, "42s"), (125, "2m05s"),
                                         (3 * 3600 + 7 * 60, "3h07m")])  # fmt: skip
def test_elapsed(s, text):
    assert elapsed(s) == text


def _command(**kw):
    @click.command()
    @quiet_option(**kw)
    def cmd(quiet):
        click.echo(f"quiet={quiet}")

    return cmd


@pytest.mark.parametrize(("args", "quiet"), [([], False), (["-q"], True), (["--quiet"], True),
                                             (["--no-progress"], True), (["--progress"], False)])  # fmt: skip
def test_quiet_option_and_its_old_spellings(args, quiet):
    r = CliRunner().invoke(_command(), args)
    assert r.exit_code == 0 and r.stdout == f"quiet={quiet}\n", r.output
    assert "--progress " not in CliRunner().invoke(_command(), ["--help"]).stdout  # hidden


def test_quiet_option_without_the_short_and_old_names():
    cmd = _command(short=False, legacy=False)
    assert CliRunner().invoke(cmd, ["--quiet"]).stdout == "quiet=True\n"
    for bad in ("-q", "--no-progress", "--progress"):
        assert CliRunner().invoke(cmd, [bad]).exit_code == 2
