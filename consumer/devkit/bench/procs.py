"""The processes a bench run starts, and what the kernel says about them.

Every child is started in its own session (a Ctrl-C in the terminal reaches only the bench,
which then stops them in order) and registered in one :class:`Children`, whose
:meth:`~Children.stop_all` runs in the bench's ``finally`` and, as a last resort, at exit. CPU
and memory come from ``/proc`` (Linux), so the report can say which process was busy.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import consumer

#: The checkout whose code the children must run (the bench's own), whatever their cwd.
REPO_ROOT = Path(consumer.__file__).resolve().parents[1]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """The bench's environment plus ``extra``, importing this checkout's ``consumer`` first."""
    env = {**os.environ, **extra}
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{path}" if path else str(REPO_ROOT)
    return env


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process (all its threads); NaN when unreadable."""
    if pid is None:
        return float("nan")
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    # The command name (field 2) may hold spaces; the fields after its ")" are fixed.
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from ``/proc/stat``."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return float("nan"), float("nan")
    ticks = [int(v) for v in first]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    total = sum(ticks[:8])
    return (total - idle) / _TICKS, total / _TICKS


def memory_kib(pid: int | None, key: str = "VmHWM") -> int | None:
    """A ``/proc/<pid>/status`` memory figure in KiB (``VmHWM``: peak resident set)."""
    if pid is None:
        return None
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(found.group(1)) if found else None


@dataclass
class Child:
    """One started process and where its output goes."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        """Its process id."""
        return self.proc.pid

    def alive(self) -> bool:
        """Still running."""
        return self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        """The end of its log, to show when it died."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Children:
    """Every process the bench started; each is stopped exactly once, in reverse order."""

    def __init__(self) -> None:
        self._children: list[Child] = []
        #: Stops of processes started elsewhere (the broker), run by :meth:`stop_all` too.
        self._others: list[Callable[[], None]] = []
        #: Run each service under cProfile (``--profile``): its stats go beside its log.
        self.profile = False
        atexit.register(self.stop_all)

    def watch(self, stop: Callable[[], None]) -> None:
        """Have :meth:`stop_all` call ``stop`` (for a process another class started)."""
        self._others.append(stop)

    def unwatch(self, stop: Callable[[], None]) -> None:
        """Forget a ``stop`` given to :meth:`watch` (its process was stopped)."""
        if stop in self._others:
            self._others.remove(stop)

    def spawn(
        self, name: str, argv: list[str], *, env: dict[str, str], log: Path, cwd: Path
    ) -> Child:
        """Start ``argv`` with stdout and stderr in ``log``."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child = Child(name, proc, log)
        self._children.append(child)
        return child

    def python(
        self, name: str, args: list[str], *, env: dict[str, str], log: Path, cwd: Path
    ) -> Child:
        """Start ``python -m ...`` with this interpreter and this checkout's code."""
        if self.profile and args[:3] == ["-m", "consumer", "run"]:
            # The service returns from main on SIGTERM; the stats are written then.
            profiled = "consumer.devkit.bench.profiled"
            args = ["-m", profiled, str(log.with_suffix(".prof")), *args[2:]]
        return self.spawn(name, [sys.executable, *args], env=child_env(env), log=log, cwd=cwd)

    def stop(self, child: Child, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` (the service drains), then SIGKILL; the exit code."""
        if child in self._children:
            self._children.remove(child)
        proc = child.proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=10)
        return proc.returncode

    def stop_all(self, timeout: float = 20.0) -> None:
        """Stop every child still registered (last started first), then the others."""
        for child in reversed(list(self._children)):
            self.stop(child, timeout)
        while self._others:
            stop = self._others.pop()
            with contextlib.suppress(Exception):
                stop()


def wait_for_line(child: Child, pattern: str, timeout: float = 30.0) -> re.Match[str]:
    """Wait until the child's log has a line matching ``pattern`` (e.g. the emulator's URL)."""
    deadline = time.monotonic() + timeout
    regex = re.compile(pattern)
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            found = regex.search(child.log.read_text(errors="replace"))
            if found:
                return found
        if not child.alive():
            raise RuntimeError(f"{child.name} exited early:\n{child.log_tail()}")
        time.sleep(0.05)
    raise RuntimeError(f"{child.name} did not print {pattern!r} in {timeout:.0f}s")
