"""`python -m farm.healthcheck` (the images' HEALTHCHECK) against real HTTP servers on 127.0.0.1
standing in for Ray Serve's proxy (`/-/healthz`) and the local raylet's dashboard agent
(`/api/local_raylet_healthz`), and against ports where nothing listens."""

import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from farm.healthcheck import check, main

ROOT = Path(__file__).resolve().parents[2]


class Server:
    """A tiny HTTP server on 127.0.0.1 answering `path` with `status` (changeable)."""

    def __init__(self, path: str, status: int = 200, body: str = "success"):
        self.path, self.status, self.body, self.hits = path, status, body, 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # http.server's name
                outer.hits += 1
                status = outer.status if self.path == outer.path else 404
                data = outer.body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve_proxy():
    server = Server("/-/healthz")
    yield server
    server.close()


@pytest.fixture
def raylet():
    server = Server("/api/local_raylet_healthz")
    yield server
    server.close()


@pytest.fixture
def closed_url():
    """A loopback port where nothing listens (bound, then closed: the connection is refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/-/healthz"


def test_a_healthy_serve_proxy_is_enough(serve_proxy, raylet):
    healthy, line = check(serve_proxy.url, raylet.url, timeout_s=5)
    assert healthy and serve_proxy.url in line and raylet.hits == 0


def test_a_serve_proxy_that_answers_unhealthy_is_not_masked_by_the_raylet(serve_proxy, raylet):
    serve_proxy.status, serve_proxy.body = 503, "This node is being drained."
    healthy, line = check(serve_proxy.url, raylet.url, timeout_s=5)
    assert not healthy and "503" in line and "drained" in line and raylet.hits == 0


def test_without_serve_the_local_raylet_decides(closed_url, raylet):
    assert check(closed_url, raylet.url, timeout_s=5) == (True, f"{raylet.url}: 200 success")
    raylet.status, raylet.body = 503, "Local Raylet failed"
    healthy, line = check(closed_url, raylet.url, timeout_s=5)
    assert not healthy and "Local Raylet failed" in line


def test_nothing_listening_is_unhealthy(closed_url):
    healthy, line = check(closed_url, closed_url.replace("/-/healthz", "/api/local_raylet_healthz"), timeout_s=5)
    assert not healthy and "no Ray node runs" in line


def test_require_serve_does_not_fall_back(closed_url, raylet):
    healthy, line = check(closed_url, raylet.url, timeout_s=5, require_serve=True)
    assert not healthy and "farm serve is not running" in line and raylet.hits == 0


def test_a_server_that_does_not_answer_in_time_is_unhealthy():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)  # accepts connections (in the backlog) but never answers
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/-/healthz"
        healthy, line = check(url, None, timeout_s=0.5)
    finally:
        sock.close()
    assert not healthy and "timed out" in line.lower()


def test_main_exits_0_or_1_as_docker_expects(serve_proxy, closed_url, capsys):
    assert main(["--serve", serve_proxy.url, "--raylet", ""]) == 0
    assert capsys.readouterr().out.startswith("healthy: ")
    assert main(["--serve", closed_url, "--raylet", ""]) == 1
    assert capsys.readouterr().out.startswith("unhealthy: ")


def test_the_module_runs_as_the_dockerfiles_call_it(serve_proxy, raylet, closed_url):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for serve_url, code in ((serve_proxy.url, 0), (closed_url, 0)):
        result = subprocess.run([sys.executable, "-m", "farm.healthcheck", "--serve", serve_url, "--raylet", raylet.url],
                                capture_output=True, text=True, env=env, timeout=60)
        assert result.returncode == code, result.stdout + result.stderr
    raylet.status = 500
    result = subprocess.run([sys.executable, "-m", "farm.healthcheck", "--serve", closed_url, "--raylet", raylet.url],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1 and "500" in result.stdout


def test_the_check_imports_nothing_heavy():
    code = "import sys, farm.healthcheck; print(sorted(m for m in ('ray', 'torch', 'requests', 'pydantic') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr
