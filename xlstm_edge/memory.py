"""This process's memory, for per-stage reports and up-front estimates (Linux /proc; elsewhere None).

    PeakSampler()            the resident set's peak over a stretch of work (a thread samples VmRSS)
    peak_bytes()             the process's peak so far (VmHWM, what ``/usr/bin/time -v`` reports)
    available_bytes()        what the machine can still give (psutil's ``available``)
    release_freed()          collect garbage and hand freed heap pages back to the system (glibc)

The kernel's own peak (VmHWM) is never reset here (``/proc/self/clear_refs`` could, but then
``/usr/bin/time``'s figure would lose the earlier peaks): per-stage peaks come from sampling.
"""

from __future__ import annotations

from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_bytes() -> int | None:
    """Peak resident set (bytes) since the process started or ``reset_peak`` was last called."""
    kib = _status_kib("VmHWM")
    return None if kib is None else kib * 1024


def rss_bytes() -> int | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def release_freed() -> None:
    """Collect the garbage (exporters leave cycles of large objects behind) and return the heap's free
    pages to the system (glibc ``malloc_trim``): freed blocks otherwise stay in malloc's arenas and in
    the resident set, so a stage's peak would carry the last stage's leftovers. No-op off glibc."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakSampler:
    """Samples the resident set every ``interval`` s on a daemon thread; ``restart()`` begins a new
    stretch and returns the peak of the one before (bytes, or None without /proc)."""

    def __init__(self, interval: float = 0.02):
        import threading

        self.interval = interval
        self._peak: int | None = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        now = rss_bytes()
        if now is not None and (self._peak is None or now > self._peak):
            self._peak = now

    def restart(self) -> int | None:
        self._sample()
        peak, self._peak = self._peak, rss_bytes()
        return peak

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> int | None:
        """End the sampling thread (joined: no thread is left to run into the interpreter's shutdown)."""
        self._stop.set()
        self._thread.join()
        return self.restart()


def available_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def gib(n: int | float | None) -> str:
    return "?" if n is None else f"{n / 2**30:.2f} GiB"
