"""A probe for the memory test, loaded by a test worker whose PYTHONPATH starts with this folder.

On SIGUSR1 it collects garbage, hands glibc's free pages back to the kernel (``malloc_trim``) and writes the resident
set size, in bytes, to ``$SEGPIPE_RSS_PROBE.<n>`` (n: 1, 2, ... per signal). What stays resident is what the process
still uses, so a leak shows; the free memory glibc keeps for reuse, which rises and falls with how many requests
happened to be in flight, does not.
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal

_target = os.environ.get("SEGPIPE_RSS_PROBE")
_probes = 0


def _probe(signum: int, frame: object) -> None:
    global _probes
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as statm:
        resident = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    _probes += 1
    path = f"{_target}.{_probes}"
    with open(f"{path}.partial", "w") as out:
        out.write(str(resident))
    os.replace(f"{path}.partial", path)


if _target:
    signal.signal(signal.SIGUSR1, _probe)
