"""A real ``vqa serve`` for the tests and the benchmarks: ``start`` runs one on a free port (``Server``), ``http``
talks to it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

LISTENING = re.compile(r"listening on (http://\S+)")


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    stderr: list[str] = field(default_factory=list)

    def get(self, path: str, key: str | None = None) -> tuple[int, dict]:
        return http(self.url + path, key=key)

    def post(self, path: str, body: dict | bytes, key: str | None = None) -> tuple[int, dict]:
        return http(self.url + path, body, key=key)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited: " + "".join(self.stderr))
            status, _ = self.get("/health")
            if status == 200:
                return
            time.sleep(0.2)
        raise TimeoutError("server not ready")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def http(url: str, body: dict | bytes | None = None, key: str | None = None, timeout: float = 300
         ) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, {"raw": raw.decode(errors="replace")}


def start(args: list[str], cwd: str | None = None, env: dict | None = None, wait: bool = True) -> Server:
    """``vqa serve ARGS --port 0`` in a child process: returns once it listens (and, with ``wait``, once the model
    is loaded)."""
    proc = subprocess.Popen([sys.executable, "-m", "vqa_cli", "serve", "--port", "0", *args], cwd=cwd,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, **(env or {})})
    lines: list[str] = []
    url = None
    deadline = time.time() + 120
    while url is None and time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        found = LISTENING.search(line)
        if found:
            url = found.group(1)
    if url is None:
        proc.kill()
        raise RuntimeError("server did not start: " + "".join(lines) + (proc.stderr.read() or ""))
    server = Server(proc, url, lines)
    import threading

    threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    if wait:
        server.wait_ready()
    return server
