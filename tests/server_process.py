"""Run `nomaflow serve` as a real process for tests and benches."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    def __init__(self, instance: Path, port: int | None = None, **env: str):
        self.instance = instance
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output = instance / f"serve-{self.port}.log"
        self.env = {**os.environ, "NOMAFLOW_INSTANCE": str(instance), **env}
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 20) -> float:
        """Start the server; return seconds until /healthz first answered 200."""
        began = time.monotonic()
        with self.output.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        while time.monotonic() - began < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log()}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return time.monotonic() - began
            except requests.ConnectionError:
                pass
            time.sleep(0.02)
        raise TimeoutError(f"no answer from {self.url} in {timeout}s: {self.log()}")

    def log(self) -> str:
        return self.output.read_text()

    def printed_password(self) -> str | None:
        match = re.search(r"created user 'admin' with password: (\S+)", self.log())
        return match.group(1) if match else None

    def health(self) -> dict:
        return requests.get(self.url + "/healthz", timeout=5).json()

    def stop(self, kill: bool = False) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def sign_in_over_http(url: str, username: str, password: str) -> requests.Session:
    session = requests.Session()
    page = session.get(url + "/login", timeout=5).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    response = session.post(
        url + "/login",
        data={"username": username, "password": password, "csrf_token": token},
        timeout=5,
    )
    response.raise_for_status()
    return session
