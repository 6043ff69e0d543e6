"""Web images: host allowlist, address checks after DNS and on every redirect, size and time limits.

A real HTTP server on 127.0.0.1 serves the images; reaching it needs the development-only
FARM_URL_ALLOW_LOOPBACK setting, which never opens private, link-local or metadata addresses.
"""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from farm.core.errors import ImageError
from farm.storage.config import UrlFetchConfig
from farm.storage.inputs import address_refusal, fetch_url, host_allowed
from helpers import encode, pattern

IMAGE = encode(pattern(64, 64), "PNG")


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        port = self.server.server_address[1]
        routes = {
            "/image.png": (200, {"Content-Type": "image/png"}, IMAGE),
            "/to-metadata": (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b""),
            "/to-private": (302, {"Location": "http://10.0.0.7/image.png"}, b""),
            "/to-other-host": (302, {"Location": f"http://localhost:{port}/image.png"}, b""),
            "/to-image": (302, {"Location": "/image.png"}, b""),
            "/loop": (302, {"Location": "/loop"}, b""),
            "/big": (200, {"Content-Length": str(10_000_000)}, b"x" * 100),
        }
        if self.path == "/chunked-big":
            self.send_response(200)
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"y" * 10_000)
            return
        if self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            time.sleep(3)
            return
        status, headers, body = routes.get(self.path, (404, {}, b""))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def dev(**overrides) -> UrlFetchConfig:
    values = {"allowed_hosts": "127.0.0.1", "allow_http": True, "allow_loopback": True, "timeout_s": 2.0}
    values.update(overrides)
    return UrlFetchConfig(**values)


def refused(url, config, reason="image_refused"):
    with pytest.raises(ImageError) as caught:
        fetch_url(url, config)
    assert caught.value.reason == reason, str(caught.value)
    return str(caught.value)


def test_an_allowed_host_is_fetched(server):
    assert fetch_url(f"{server}/image.png", dev()) == IMAGE
    assert fetch_url(f"{server}/to-image", dev()) == IMAGE  # a redirect within the rules


def test_urls_are_off_until_the_operator_allows_hosts(server):
    assert "FARM_URL_ALLOWED_HOSTS" in refused(f"{server}/image.png", dev(allowed_hosts=""))


def test_hosts_outside_the_allowlist(server):
    assert "not in the allowed hosts" in refused("https://evil.example/x.png", dev(allowed_hosts="cdn.example.com"))
    assert "not in the allowed hosts" in refused(f"{server}/to-other-host", dev())  # localhost is not 127.0.0.1


def test_plain_http_needs_the_operator(server):
    assert "http:// is not allowed" in refused(f"{server}/image.png", dev(allow_http=False))


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("http://127.0.0.1/x.png", "loopback"),
        ("http://localhost/x.png", "loopback"),
        ("http://[::1]/x.png", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.0.0.7/x.png", "private"),
        ("http://192.168.1.1/x.png", "private"),
        ("http://172.16.0.1/x.png", "private"),
        ("http://0.0.0.0/x.png", "not a public address"),
        ("http://100.64.0.1/x.png", "not a public address"),
        ("http://[::ffff:127.0.0.1]/x.png", "loopback"),
    ],
)
def test_internal_addresses_are_refused_even_when_allowlisted(url, fragment):
    host = url.split("//")[1].split("/")[0].strip("[]")
    config = UrlFetchConfig(allowed_hosts=host, allow_http=True)
    assert fragment in refused(url, config)


def test_loopback_permission_never_opens_metadata_or_private_addresses(server):
    assert "link-local" in refused(f"{server}/to-metadata", dev(allowed_hosts="127.0.0.1,169.254.169.254"))
    assert "private" in refused(f"{server}/to-private", dev(allowed_hosts="127.0.0.1,10.0.0.7"))
    assert "not in the allowed hosts" in refused("http://metadata.google.internal/x", dev(allowed_hosts="*"))


def test_credentials_in_urls_and_redirect_loops(server):
    assert "credentials" in refused(server.replace("http://", "http://user:pw@") + "/image.png", dev())
    assert "redirects" in refused(f"{server}/loop", dev())


def test_size_and_time_limits(server):
    assert "over the" in refused(f"{server}/big", dev(max_bytes=1_000_000), "image_too_large")
    assert "over the" in refused(f"{server}/chunked-big", dev(max_bytes=100_000), "image_too_large")
    started = time.monotonic()
    refused(f"{server}/slow", dev(timeout_s=1.0), "image_not_found")
    assert time.monotonic() - started < 2.5


def test_allowlist_patterns_and_address_rules():
    assert host_allowed("cdn.example.com", ["*.example.com"]) and not host_allowed("example.com", ["*.example.com"])
    assert not host_allowed("evilexample.com", ["*.example.com"])
    assert address_refusal("8.8.8.8", UrlFetchConfig()) is None
    assert address_refusal("127.0.0.1", UrlFetchConfig(allow_loopback=True)) is None
    assert address_refusal("fd00:ec2::254", UrlFetchConfig()) is not None
