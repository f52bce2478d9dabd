"""The console of a real CLI run (a subprocess, so Lightning's log handlers and warnings print
as they do for a user): no library noise, one progress display, --quiet and --verbose."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from conftest import FAST

from domainssl.progress import RunProgress, format_duration

NOISE = [
    "GPU available:",
    "TPU available:",
    "💡 Tip",
    "litlogger",
    "was configured so",
    "LeafSpec",
    "smaller than the logging interval",
    "`Trainer.fit` stopped",
    "Training: |",
]


def run_cli(data: Path, out: Path, *extra: str) -> str:
    fast = [f"--set={item}" for item in FAST if not item.startswith("trainer.epochs")]
    args = ["pretrain", "--data", str(data), "--out", str(out), "--name", "r", "--epochs", "2"]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONWARNINGS"}
    done = subprocess.run(
        [sys.executable, "-m", "domainssl", *args, *fast, *extra],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    return output


def test_console_of_a_run_holds_no_library_noise_and_one_progress_display(
    tif_chips: Path, tmp_path: Path
) -> None:
    output = run_cli(tif_chips, tmp_path)
    for noise in NOISE:
        assert noise not in output, (noise, output)
    progress = [line for line in output.splitlines() if line.startswith("epoch ")]
    assert progress, output  # not a terminal: whole lines, not redraws
    assert progress[-1].startswith("epoch 2/2") and "step 2/2 (100%)" in progress[-1]
    assert "elapsed" in progress[-1] and "img/s" in progress[-1] and "loss" in progress[-1]
    assert "Stopped because its last epoch was done: epoch 2, step 2" in output
    assert "Run folder:" in output and "report.md" in output


def test_quiet_prints_the_summary_only_and_verbose_keeps_library_messages(
    tif_chips: Path, tmp_path: Path
) -> None:
    quiet = run_cli(tif_chips, tmp_path / "quiet", "--quiet")
    assert not [line for line in quiet.splitlines() if line.startswith("epoch ")], quiet
    assert "Data prepared" not in quiet and "Run folder:" in quiet
    verbose = run_cli(tif_chips, tmp_path / "verbose", "--verbose")
    assert "GPU available:" in verbose


def test_progress_on_a_terminal_redraws_one_line() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    progress = RunProgress(stream=stream)
    progress.show("epoch 1/2  step 1/4")
    progress.show("epoch 1/2  step 2/4")
    progress.finish()
    assert stream.getvalue() == "\repoch 1/2  step 1/4\repoch 1/2  step 2/4\n"
    assert progress.interval < 1  # redrawn often; a log file gets a line every 30 s


def test_durations_read_as_clock_times() -> None:
    assert format_duration(59.6) == "1:00"
    assert format_duration(3725) == "1:02:05"
