"""The memory test's probe (``rss_probe/sitecustomize.py``) counts what a process holds and not what it freed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PROBE = Path(__file__).parent / "rss_probe"
MIB = 1024 * 1024

# 1,000 blocks of 100 KiB (under glibc's mmap threshold: from the heap), each followed by a 1 KiB one (over pymalloc's
# 512 bytes: from the same heap) that stays: freeing the blocks leaves ~100 MiB of free heap that only a trim hands
# back. Without the probe's malloc_trim, "freed" measured ~87 MiB above "before".
CHILD = """
import sys
held, pins = [], []
for line in sys.stdin:
    if line.strip() == "hold":
        for _ in range(1000):
            held.append(bytearray(b"x" * (100 * 1024)))
            pins.append(bytearray(b"y" * 1024))
    elif line.strip() == "free":
        held.clear()
    print("ok", flush=True)
"""


def test_probe_counts_held_memory_and_not_freed_memory(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(PROBE), "SEGPIPE_RSS_PROBE": str(tmp_path / "rss")}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdin is not None and child.stdout is not None
    probes = 0

    def step(command: str) -> int:
        nonlocal probes
        child.stdin.write(command + "\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "ok"
        probes += 1
        os.kill(child.pid, signal.SIGUSR1)
        answer = tmp_path / f"rss.{probes}"
        deadline = time.monotonic() + 30
        while not answer.exists():
            assert time.monotonic() < deadline, "no answer from the probe"
            time.sleep(0.05)
        return int(answer.read_text())

    try:
        before = step("nothing")
        holding = step("hold")
        freed = step("free")
    finally:
        child.kill()
        child.wait()
    assert holding - before > 90 * MIB, (before, holding)
    assert freed - before < 10 * MIB, (before, holding, freed)
