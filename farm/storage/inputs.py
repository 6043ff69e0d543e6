"""Reading an item's input image: a local path, `s3://bucket/key`, or an allowed `https://` URL.

Every reader enforces the byte limit before reading the body, and returns a fingerprint that
changes when the image changes (size and mtime for files, the ETag for S3 objects, the URL for
web images, which are taken as immutable) so a later run can skip unchanged items cheaply.

Web images are off unless the operator lists allowed hosts (FARM_URL_ALLOWED_HOSTS). Every hop,
redirects included, is checked after DNS resolution: only globally routable addresses, never
loopback, private, link-local (cloud metadata at 169.254.169.254 among them), multicast or
reserved ones. The connection goes to the address that was checked, so a second DNS answer
cannot swap it (DNS rebinding). Size and time are capped.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from farm.core.errors import FarmError, ImageError
from farm.media.images import ImageLimits, read_image_file
from farm.storage.config import StorageConfig, UrlFetchConfig

METADATA_HOSTS = {"metadata.google.internal", "metadata", "instance-data", "instance-data.ec2.internal"}


@dataclass(frozen=True)
class InputImage:
    data: bytes
    fingerprint: str


def read_input(location: str, limits: ImageLimits = ImageLimits(), root: str | None = None) -> InputImage:
    """Read an item's image; a local one must lie inside `root` when given (the job's image_root)."""
    if location.startswith("s3://"):
        return _read_s3(location, limits)
    if location.startswith(("https://", "http://")):
        return InputImage(fetch_url(location, UrlFetchConfig(), max_bytes=limits.max_bytes), location)
    data = read_image_file(location, limits, root=root)
    return InputImage(data, local_fingerprint(location))


def local_fingerprint(path: str) -> str:
    stat = os.stat(path)
    return f"{stat.st_size:x}-{stat.st_mtime_ns:x}"


_S3_CLIENT = None


def s3_client():
    """One client per process for input reads (boto3 clients are thread safe)."""
    global _S3_CLIENT
    if _S3_CLIENT is None:
        from farm.storage.s3 import S3Store

        _S3_CLIENT = S3Store("s3://inputs", StorageConfig()).client
    return _S3_CLIENT


def _read_s3(location: str, limits: ImageLimits) -> InputImage:
    from botocore.exceptions import BotoCoreError, ClientError

    from farm.storage.s3 import parse_s3_uri

    bucket, key = parse_s3_uri(location)
    if not key:
        raise ImageError(f"image {location!r} names a bucket but no object; write s3://BUCKET/KEY", "image_not_found")
    client = s3_client()
    try:
        head = client.head_object(Bucket=bucket, Key=key)
        size = int(head["ContentLength"])
        if size > limits.max_bytes:
            raise ImageError(
                f"image {location} is {size} bytes, over the {limits.max_bytes}-byte limit; downscale or recompress it",
                "image_too_large",
            )
        body = client.get_object(Bucket=bucket, Key=key, IfMatch=head["ETag"])["Body"].read(limits.max_bytes + 1)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
            raise ImageError(f"image {location} not found; check the bucket and key", "image_not_found") from None
        raise ImageError(f"cannot read image {location}: {code or exc}", "image_not_found") from None
    except BotoCoreError as exc:
        raise ImageError(f"cannot read image {location}: {type(exc).__name__}", "image_not_found") from None
    return InputImage(body, head["ETag"].strip('"'))


# --- web images ------------------------------------------------------------------------------


def host_allowed(host: str, allowed: list[str]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in allowed:
        if pattern.startswith("*.") and (host.endswith(pattern[1:]) and host != pattern[2:]):
            return True
        if host == pattern:
            return True
    return False


def address_refusal(address: str, config: UrlFetchConfig) -> str | None:
    """Why an address may not be contacted, or None if it may."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return None if config.allow_loopback else "a loopback address"
    if ip.is_link_local:
        return "a link-local address (cloud metadata lives there)"
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return "not a public address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "not a public address"
    return None


def _resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ImageError(f"image host {host!r} does not resolve ({exc.strerror})", "image_not_found") from None
    return list(dict.fromkeys(info[4][0] for info in infos))


def _checked_pool(url: str, current: str, config: UrlFetchConfig, deadline: float):
    """Check one hop of `url` (scheme, host allowlist, every resolved address) and return a
    connection pool bound to the checked address, with the request path and Host header."""
    import urllib3

    parts = urlsplit(current)
    schemes = ("https", "http") if config.allow_http else ("https",)
    if parts.scheme not in schemes:
        raise ImageError(f"{url!r}: {parts.scheme}:// is not allowed (use https://)", "image_refused")
    host = (parts.hostname or "").lower()
    if not host or host in METADATA_HOSTS or not host_allowed(host, config.hosts):
        raise ImageError(f"{url!r}: host {host!r} is not in the allowed hosts", "image_refused")
    if parts.username or parts.password:
        raise ImageError(f"{url!r}: credentials in URLs are not allowed", "image_refused")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = _resolve(host, port)
    for address in addresses:
        refusal = address_refusal(address, config)
        if refusal:
            raise ImageError(f"{url!r}: host {host!r} resolves to {refusal} ({address})", "image_refused")
    remaining = max(deadline - time.monotonic(), 0.1)
    timeout = urllib3.Timeout(connect=remaining, read=remaining)
    if parts.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            addresses[0], port, server_hostname=host, assert_hostname=host, cert_reqs="CERT_REQUIRED",
            timeout=timeout, retries=False,
        )
    else:
        pool = urllib3.HTTPConnectionPool(addresses[0], port, timeout=timeout, retries=False)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return pool, path, parts.netloc.rsplit("@", 1)[-1]


def fetch_url(url: str, config: UrlFetchConfig, *, max_bytes: int | None = None) -> bytes:
    """GET an image over HTTPS with the operator's host allowlist, address rules and limits."""
    import urllib3

    limit = min(max_bytes or config.max_bytes, config.max_bytes)
    deadline = time.monotonic() + config.timeout_s
    if not config.hosts:
        raise ImageError(
            f"image {url!r}: image URLs are disabled; the operator can allow hosts with FARM_URL_ALLOWED_HOSTS",
            "image_refused",
        )
    current = url
    for _hop in range(config.max_redirects + 1):
        pool, path, host_header = _checked_pool(url, current, config, deadline)
        try:
            response = pool.urlopen(
                "GET", path, headers={"Host": host_header, "User-Agent": "farm"}, redirect=False, preload_content=False
            )
        except urllib3.exceptions.HTTPError as exc:
            raise ImageError(f"image {url!r}: request failed ({type(exc).__name__})", "image_not_found") from None
        try:
            if response.status in (301, 302, 303, 307, 308):
                location = response.headers.get("Location")
                if not location:
                    raise ImageError(f"image {url!r}: redirect without a Location", "image_not_found")
                current = urljoin(current, location)
                continue
            if response.status != 200:
                raise ImageError(f"image {url!r}: HTTP {response.status}", "image_not_found")
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise ImageError(f"image {url!r} is {declared} bytes, over the {limit}-byte limit", "image_too_large")
            chunks, total = [], 0
            for chunk in response.stream(64 * 1024):
                total += len(chunk)
                if total > limit:
                    raise ImageError(f"image {url!r} is over the {limit}-byte limit", "image_too_large")
                if time.monotonic() > deadline:
                    raise ImageError(f"image {url!r}: took longer than {config.timeout_s:.0f} s", "image_not_found")
                chunks.append(chunk)
            return b"".join(chunks)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ImageError(f"image {url!r}: download failed ({type(exc).__name__})", "image_not_found") from None
        finally:
            response.release_conn()
    raise ImageError(f"image {url!r}: more than {config.max_redirects} redirects", "image_refused")


def check_url(url: str, config: UrlFetchConfig) -> None:
    """Raise FarmError if `url` breaks the allowlist or address rules (for webhooks, at submit)."""
    if not config.hosts:
        raise FarmError(f"{url!r}: outgoing URLs are disabled; the operator can allow hosts with FARM_URL_ALLOWED_HOSTS")
    try:
        _checked_pool(url, url, config, time.monotonic() + config.timeout_s)
    except ImageError as error:
        raise FarmError(str(error)) from None


def post_json(url: str, payload: dict, config: UrlFetchConfig) -> int:
    """POST a JSON body once (webhooks): same allowlist and address rules, no redirects."""
    import json

    import urllib3

    try:
        pool, path, host_header = _checked_pool(url, url, config, time.monotonic() + config.timeout_s)
        response = pool.urlopen(
            "POST", path, body=json.dumps(payload).encode(), redirect=False,
            headers={"Host": host_header, "User-Agent": "farm", "Content-Type": "application/json"},
        )
    except ImageError as error:
        raise FarmError(str(error)) from None
    except urllib3.exceptions.HTTPError as exc:
        raise FarmError(f"{url!r}: request failed ({type(exc).__name__})") from None
    if response.status >= 400:
        raise FarmError(f"{url!r}: HTTP {response.status}")
    return response.status
