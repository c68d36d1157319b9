"""A real server in its own process, for the browser tests: `scripts/serve` itself,
or a test variant of it, started on a free port and stopped by a signal."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class ServedProcess:
    """Run ``argv + ["--port", port, "--log-format", "json"]`` and wait until it listens.

    The server's log goes to ``log_path``. Port 0 picks a free port the first time;
    :meth:`restart` reuses it, as a redeployed server would.
    """

    def __init__(self, argv: list[str], log_path: Path, port: int = 0) -> None:
        self.argv = argv
        self.log_path = log_path
        self.port = port
        self.proc: subprocess.Popen[str] | None = None
        self.http_url = ""

    def start(self, timeout: float = 30.0) -> ServedProcess:
        listening = threading.Event()
        self.proc = subprocess.Popen(
            [*self.argv, "--port", str(self.port), "--log-format", "json"],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        log = self.log_path.open("a")

        def drain(stream) -> None:  # keeps the pipe empty and the log complete
            for line in stream:
                log.write(line)
                log.flush()
                if not listening.is_set() and line.startswith("{"):
                    record = json.loads(line)["record"]
                    if record["message"] == "listening":
                        self.http_url = record["extra"]["http"]
                        self.port = int(self.http_url.rsplit(":", 1)[1].strip("/"))
                        listening.set()
            log.close()

        threading.Thread(target=drain, args=(self.proc.stderr,), daemon=True).start()
        if not listening.wait(timeout):
            self.kill()
            raise RuntimeError(f"the server did not listen within {timeout} s; see {self.log_path}")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the server and wait for it to exit; returns its exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def restart(self) -> ServedProcess:
        self.stop()
        return self.start()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
