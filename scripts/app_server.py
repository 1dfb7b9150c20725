"""Start the app (`python app.py`, or another server command) on 127.0.0.1 and time it.

The one launcher that the tests (tests/conftest.py), the serving benchmark and the soak
share; a library, not a command:

    from scripts.app_server import AppServer
    with AppServer({"MODEL_REPO": "models/lc25000"}) as server:
        print(server.url, server.started_s)      # ready: /gradio_api/info answers
        print(server.cpu_seconds(), server.memory_mb("VmHWM"))
    print(server.output())                       # everything it printed

Each server gets a free port (GRADIO_SERVER_PORT), Gradio's analytics off and unbuffered
output in a temporary file. A server that exits or does not answer in `timeout` seconds
raises RuntimeError with the end of its output.
"""

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET = {"GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """A server process on 127.0.0.1 and a free port, timed from its start.

    env: variables on top of this process's environment (MODEL_REPO, TTA, QUEUE_SIZE ...).
    cmd: the command (default `python app.py`, run in the repository root).
    wait: return once the server answers (default); False returns at once (then call
    wait_until_ready, or first_answer to time a cold start)."""

    def __init__(self, env=None, cmd=None, wait=True, timeout=120):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = tempfile.TemporaryFile("w+")
        self.started_s = None
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd or [sys.executable, "app.py"], cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
            env={**QUIET, **os.environ, **(env or {}), "GRADIO_SERVER_NAME": "127.0.0.1",
                 "GRADIO_SERVER_PORT": str(self.port)})
        if wait:
            try:
                self.wait_until_ready(timeout)
            except BaseException:
                self.stop()
                raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def wait_until_ready(self, timeout=120):
        """Poll /gradio_api/info until it answers; returns seconds since the process started."""
        while time.perf_counter() - self.t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            try:
                urllib.request.urlopen(self.url + "gradio_api/info", timeout=2)
                self.started_s = time.perf_counter() - self.t0
                return self.started_s
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"the server did not answer in {timeout} s:\n{self.output()[-3000:]}")

    def first_answer(self, image, timeout=180, api_name="/predict"):
        """Seconds from process start to the first answer of `image` (a path) from `api_name`."""
        from gradio_client import Client, handle_file

        self.wait_until_ready(timeout)
        Client(self.url, verbose=False).predict(handle_file(image), api_name=api_name)
        return time.perf_counter() - self.t0

    def output(self):
        """Everything the server printed so far (stdout and stderr)."""
        if self.log.closed:
            return self._final_output
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def cpu_seconds(self):
        """User + system CPU time the server process has used so far (Linux /proc)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_mb(self, field="VmRSS"):
        """The server's resident memory now (VmRSS) or at its peak (VmHWM), in MB (Linux /proc)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024

    def stop(self):
        """Terminate the server (kill it after 15 s); its output stays readable."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.log.closed:
            self._final_output = self.output()
            self.log.close()


def run_app_until_exit(env, timeout=120):
    """Start `python app.py` expecting it to refuse to start: returns (exit status, output).
    A hang past `timeout` seconds raises subprocess.TimeoutExpired."""
    p = subprocess.run([sys.executable, "app.py"], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       env={**QUIET, **os.environ, "GRADIO_SERVER_PORT": str(free_port()), **env})
    return p.returncode, p.stdout + p.stderr
