"""One program as a child process — the apps in tests, the benchmark and ``make dev`` — with
its output in a log file, prefixed onto ours, or discarded."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Self


class Child:
    """Start, signal, wait for and stop one program: the apps, and the embedded servers.
    ``log``: a file for its output (appended), ``"prefix"``: each line onto our stdout behind
    its name, ``None``: discarded. ``env=None`` inherits ours."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None,
        log: Path | str | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> None:
        self.name, self.argv, self.env, self.log = name, argv, env, log
        self.stop_signal = stop_signal
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, new_session: bool = False) -> Self:
        """``new_session``: a terminal's Ctrl-C does not reach it (the caller stops it)."""
        if self.log is None or self.log == "prefix":
            out = subprocess.PIPE if self.log else subprocess.DEVNULL
            self.proc = self._popen(out, new_session)
        else:
            with Path(self.log).open("ab") as log:  # the child keeps its own descriptor
                self.proc = self._popen(log, new_session)
        if self.log == "prefix":
            assert self.proc.stdout is not None
            threading.Thread(target=self._relay, args=(self.proc.stdout,), daemon=True).start()
        return self

    def _popen(self, out: int | IO[bytes], new_session: bool) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,
        )

    def _relay(self, stream: IO[bytes]) -> None:
        prefix = f"{self.name:>10} | "
        if sys.stdout.isatty():
            color = 31 + sum(map(ord, self.name)) % 6
            prefix = f"\033[{color}m{prefix}\033[0m"
        for line in iter(stream.readline, b""):
            sys.stdout.write(prefix + line.decode(errors="replace"))
            sys.stdout.flush()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30) -> None:
        """Its stop signal (the apps finish their work), SIGKILL if that takes over ``timeout``."""
        if self.running:
            self.signal(self.stop_signal)
            self.reap(timeout)

    def reap(self, timeout: float = 30) -> None:
        """Wait for an exit already asked for; SIGKILL after ``timeout``."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL, as a crash would: no flush, no goodbye to clients."""
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()
