"""The trainer's console output where people read it: plain, bounded lines in a pipe or a file (``kubectl logs``,
CI), the tqdm bar only on a terminal. Each test runs ``python -m finetune_trainer --progress`` (the bar asked for,
as `finetune run` asks) on a tiny model in a subprocess whose output is a pipe or a pseudo-terminal."""

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

# step N/M epoch E loss L lr R S samples/s T tokens/s ETA H:MM:SS
LINE = re.compile(r" step (\d+)/(\d+) epoch (\d+\.\d\d) loss (\d+\.\d{4}) lr (\S+) (\d+\.\d) samples/s (\d+) tokens/s "
                  r"ETA (\d+:\d\d:\d\d)$")


@pytest.fixture
def config_file(tmp_path, job, tiny_model_dir) -> Path:
    # 96 examples, batch 2, 2 epochs: 96 steps, many more than the lines a few seconds of training deserve.
    config = job(tiny_model_dir("bert"), epochs=2, batchSize=2, logEvery=1, saveEvery=1000)
    path = tmp_path / "config.json"
    path.write_text(config.model_dump_json(by_alias=True, exclude_none=True))
    return path


def trainer(config: Path, **env: str) -> tuple[list[str], dict[str, str]]:
    # A datasets cache of its own, so the data is tokenized (and its progress shown, or not) as in a new pod.
    cache = config.parent / "datasets-cache"
    return [sys.executable, "-m", "finetune_trainer", "--config", str(config), "--progress"], {
        **os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "HF_DATASETS_CACHE": str(cache), **env}


def step_lines(text: str) -> list[re.Match]:
    return [m for line in text.splitlines() if (m := LINE.search(line))]


def test_piped_output_has_plain_lines_every_few_seconds_and_no_bar(config_file):
    command, env = trainer(config_file)
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "\r" not in output and not re.search(r"\d+%\|", output)  # no bar frames, ours nor the libraries'
    lines = step_lines(done.stdout)
    steps = [int(m.group(1)) for m in lines]
    # The first step, then one line per 10 s (default FINETUNE_LOG_SECONDS), and the last step: bounded by time,
    # not by the 96 steps.
    assert steps[0] == 1 and steps[-1] == 96 and int(lines[0].group(2)) == 96
    assert len(lines) <= 2 + seconds / 10, steps
    assert all(len(m.string) < 200 for m in lines)
    first, last = lines[0], lines[-1]
    assert float(last.group(3)) == 2.0 and last.group(8) == "0:00:00"  # epochs done; nothing left
    assert float(first.group(4)) > 0 and float(last.group(6)) > 0 and int(last.group(7)) > 0


def test_log_seconds_zero_prints_every_step(config_file):
    command, env = trainer(config_file, FINETUNE_LOG_SECONDS="0")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [int(m.group(1)) for m in step_lines(done.stdout)] == list(range(1, 97))


def test_a_bad_log_interval_is_named(config_file):
    command, env = trainer(config_file, FINETUNE_LOG_SECONDS="often")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2
    assert "FINETUNE_LOG_SECONDS='often': expected the seconds between progress lines" in done.stdout


def test_a_terminal_gets_the_bar(config_file):
    command, env = trainer(config_file)
    main, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a new pty is 0 columns wide
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=terminal, env=env)
    os.close(terminal)
    shown = bytearray()

    def drain() -> None:  # the terminal must be read while the trainer writes, or it blocks when full
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the trainer closed its end
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    stdout = process.stdout.read().decode()
    assert process.wait(timeout=300) == 0, stdout[-3000:]
    reader.join(timeout=10)
    os.close(main)
    bar = shown.decode(errors="replace")
    assert "\r" in bar and "96/96" in bar and "step" in bar  # tqdm redraws its line in place
    assert step_lines(stdout) == []  # the bar replaces the plain lines
