"""S3-compatible output storage (AWS S3, MinIO, Ceph, R2, a test server) through boto3.

- boto3's `standard` retry mode per request; on top, transient failures (timeouts, 5xx,
  throttling, refused connections) are retried with backoff for `retry_window_s` so a storage
  outage of minutes stalls uploads instead of failing items.
- Large files go through boto3's transfer manager (multipart upload and copy).
- Sidecars are committed with `If-None-Match: *` (or `If-Match: <etag>` when replacing), so two
  racing renders of one item cannot both commit; disable with FARM_S3_CONDITIONAL_WRITES=false
  for servers that reject conditional writes.
- Request checksums follow FARM_S3_CHECKSUMS: boto3 >= 1.36 sends CRC checksums by default,
  which some S3-compatible servers reject.
Credentials come from boto3's standard chain and never appear in messages.
"""

from __future__ import annotations

import logging
import os
import random
import time
from typing import Callable, Iterator, TypeVar

from farm.core.errors import CommitConflict, StorageError, TransientStorageError
from farm.storage.base import ObjectInfo
from farm.storage.config import StorageConfig
from farm.storage.digests import CHUNK_BYTES, sha256_of_chunks

log = logging.getLogger(__name__)
T = TypeVar("T")
SINGLE_COPY_LIMIT_BYTES = 5 * 1024**3  # CopyObject copies objects up to 5 GiB in one request

TRANSIENT_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeoutException",
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "OperationAborted",
}
CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict"}
PERMANENT_ADVICE = {
    "NoSuchBucket": "the bucket does not exist; create it or fix the output URI",
    "AccessDenied": "access denied; check the credentials' permissions on this bucket and prefix",
    "InvalidAccessKeyId": "the access key is not valid; check AWS_ACCESS_KEY_ID / the profile in use",
    "SignatureDoesNotMatch": "the secret key does not match; check AWS_SECRET_ACCESS_KEY / the profile in use",
    "ExpiredToken": "the session token has expired; refresh the credentials",
    "InvalidBucketName": "the bucket name is not valid; fix the output URI",
    "AllAccessDisabled": "all access to this bucket is disabled",
    # HEAD requests carry no error body, only the status.
    "404": "not found (for a bucket: it does not exist; create it or fix the output URI)",
    "403": "access denied; check the credentials (AWS_ACCESS_KEY_ID, the profile or role) and their permissions",
    "400": "the request was refused; check the endpoint (FARM_S3_ENDPOINT_URL) and the region",
}


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/prefix` -> (bucket, prefix without slashes at either end)."""
    rest = uri[len("s3://") :] if uri.startswith("s3://") else uri
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise StorageError(f"output {uri!r} has no bucket; write s3://BUCKET/PREFIX")
    return bucket, prefix.strip("/")


def classify(exc: BaseException, what: str) -> StorageError:
    """Map a botocore error to TransientStorageError, CommitConflict or StorageError."""
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        IncompleteReadError,
        NoCredentialsError,
        ProxyConnectionError,
        ReadTimeoutError,
        ResponseStreamingError,
    )

    if isinstance(exc, (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError, ProxyConnectionError)):
        return TransientStorageError(f"{what}: storage unreachable ({type(exc).__name__})")
    if isinstance(exc, (ResponseStreamingError, IncompleteReadError)):  # a body cut off mid-read
        return TransientStorageError(f"{what}: the download was interrupted ({type(exc).__name__})")
    if isinstance(exc, NoCredentialsError):
        return StorageError(f"{what}: no S3 credentials found; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or a role")
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in CONFLICT_CODES or status == 412:
            return CommitConflict(f"{what}: the object was committed by another render")
        if code in TRANSIENT_CODES or status >= 500 or status == 429:
            return TransientStorageError(f"{what}: transient storage error {code or status}")
        advice = PERMANENT_ADVICE.get(code, error.get("Message") or "storage refused the request")
        return StorageError(f"{what}: {code or status}: {advice}")
    if isinstance(exc, OSError):  # urllib3/socket errors that escaped botocore's wrappers
        return TransientStorageError(f"{what}: storage unreachable ({exc})")
    return StorageError(f"{what}: {type(exc).__name__}: {exc}")


def with_retries(operation: Callable[[], T], what: str, window_s: float, *, sleep=time.sleep, clock=time.monotonic) -> T:
    """Run `operation`, retrying transient storage errors with backoff for up to `window_s`."""
    deadline = clock() + window_s
    delay = 0.5
    while True:
        try:
            return operation()
        except StorageError as error:
            failure = error
        except Exception as exc:  # botocore and network errors
            failure = classify(exc, what)
        if not isinstance(failure, TransientStorageError) or clock() + delay > deadline:
            if isinstance(failure, TransientStorageError):
                raise TransientStorageError(f"{failure} for {window_s:.0f} s; giving up") from None
            raise failure from None
        log.warning("%s; retrying in %.1f s", failure, delay)
        sleep(delay * (0.5 + random.random() / 2))
        delay = min(delay * 2, 10.0)


class S3Store:
    def __init__(self, uri: str, config: StorageConfig | None = None):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.config = config or StorageConfig()
        self.bucket, self.prefix = parse_s3_uri(uri)
        self.uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        endpoint = self.config.resolved_endpoint
        style = self.config.addressing_style or ("path" if endpoint else "auto")
        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            region_name=self.config.region,
            config=Config(
                signature_version="s3v4",
                retries={"mode": "standard", "max_attempts": self.config.max_attempts},
                connect_timeout=self.config.connect_timeout_s,
                read_timeout=self.config.read_timeout_s,
                s3={"addressing_style": style},
                request_checksum_calculation=self.config.checksums,
                response_checksum_validation=self.config.checksums,
                max_pool_connections=max(10, self.config.max_concurrency * 2),
            ),
        )
        self.transfer = TransferConfig(
            multipart_threshold=self.config.multipart_threshold_bytes,
            multipart_chunksize=self.config.multipart_chunk_bytes,
            max_concurrency=self.config.max_concurrency,
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _run(self, operation: Callable[[], T], what: str) -> T:
        return with_retries(operation, what, self.config.retry_window_s)

    def put_file(self, key: str, local_path: str, content_type: str = "") -> ObjectInfo:
        size = os.path.getsize(local_path)
        if size < self.config.multipart_threshold_bytes:
            # The single PutObject the transfer manager would send, minus its thread pool, and the
            # PUT's own ETag instead of a HEAD afterwards: one request per file.
            with open(local_path, "rb") as handle:
                return self._put_object(key, handle.read(), content_type, {})
        full = self._key(key)
        extra = {"ContentType": content_type} if content_type else {}
        self._run(
            lambda: self.client.upload_file(local_path, self.bucket, full, ExtraArgs=extra, Config=self.transfer),
            f"upload s3://{self.bucket}/{full}",
        )
        return self.head(key) or ObjectInfo(key, "", size)  # a multipart upload's ETag comes from the server

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "", *, if_none_match: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        conditions = {}
        if self.config.conditional_writes:
            if if_none_match:
                conditions["IfNoneMatch"] = "*"
            elif if_match is not None:
                conditions["IfMatch"] = if_match
        return self._put_object(key, data, content_type, conditions)

    def _put_object(self, key: str, data: bytes, content_type: str, conditions: dict) -> ObjectInfo:
        full = self._key(key)
        arguments = {"Bucket": self.bucket, "Key": full, "Body": data, **conditions}
        if content_type:
            arguments["ContentType"] = content_type
        what = f"write s3://{self.bucket}/{full}"

        def put():
            from botocore.exceptions import ClientError

            try:
                return self.client.put_object(**arguments)
            except ClientError as exc:
                # If-Match on an object that is gone: S3 answers 404 NoSuchKey, not 412.
                if "IfMatch" in conditions and exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    raise CommitConflict(f"{what}: the object is gone (replaced or removed by another writer)") from None
                raise

        response = self._run(put, what)
        return ObjectInfo(key, response.get("ETag", "").strip('"'), len(data))

    def get_bytes(self, key: str) -> bytes | None:
        full = self._key(key)

        def read():
            from botocore.exceptions import ClientError

            try:
                return self.client.get_object(Bucket=self.bucket, Key=full)["Body"].read()
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise

        return self._run(read, f"read s3://{self.bucket}/{full}")

    def get_object(self, key: str) -> tuple[bytes, ObjectInfo] | None:
        """The bytes and the etag of the same version (one GetObject), or None."""
        full = self._key(key)

        def read():
            from botocore.exceptions import ClientError

            try:
                response = self.client.get_object(Bucket=self.bucket, Key=full)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
            data = response["Body"].read()
            return data, ObjectInfo(key, response.get("ETag", "").strip('"'), len(data))

        return self._run(read, f"read s3://{self.bucket}/{full}")

    def sha256(self, key: str) -> str | None:
        """Streams the object through the hash (never held whole); a transient failure mid-way
        restarts the read within the retry window."""
        full = self._key(key)

        def digest():
            from botocore.exceptions import ClientError

            try:
                body = self.client.get_object(Bucket=self.bucket, Key=full)["Body"]
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
            with body:
                return sha256_of_chunks(body.iter_chunks(CHUNK_BYTES))

        return self._run(digest, f"read s3://{self.bucket}/{full}")

    def head(self, key: str) -> ObjectInfo | None:
        full = self._key(key)

        def head():
            from botocore.exceptions import ClientError

            try:
                response = self.client.head_object(Bucket=self.bucket, Key=full)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise
            return ObjectInfo(key, response["ETag"].strip('"'), int(response["ContentLength"]))

        return self._run(head, f"inspect s3://{self.bucket}/{full}")

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0

        def pages():
            paginator = self.client.get_paginator("list_objects_v2")
            return list(paginator.paginate(Bucket=self.bucket, Prefix=full))

        for page in self._run(pages, f"list s3://{self.bucket}/{full}"):
            for entry in page.get("Contents", []):
                yield ObjectInfo(entry["Key"][strip:], entry["ETag"].strip('"'), int(entry["Size"]))

    def promote(self, source: str, target: str, *, size: int | None = None) -> ObjectInfo:
        """Server-side copy, then delete the source. With the size known and within CopyObject's
        5 GiB limit, one CopyObject (its response has the ETag); otherwise the transfer manager's
        managed copy (HEAD, then CopyObject or a multipart copy) and a HEAD of the result."""
        src, dst = self._key(source), self._key(target)
        what, source_ref = f"copy s3://{self.bucket}/{src} to {dst}", {"Bucket": self.bucket, "Key": src}
        promoted = None
        if size is not None and size <= SINGLE_COPY_LIMIT_BYTES:
            response = self._run(lambda: self.client.copy_object(CopySource=source_ref, Bucket=self.bucket, Key=dst), what)
            promoted = ObjectInfo(target, response["CopyObjectResult"]["ETag"].strip('"'), size)
        else:
            self._run(lambda: self.client.copy(source_ref, self.bucket, dst, Config=self.transfer), what)
        self.delete(source)
        return promoted or self.head(target) or ObjectInfo(target, "", 0)

    def delete(self, key: str) -> None:
        full = self._key(key)
        self._run(lambda: self.client.delete_object(Bucket=self.bucket, Key=full), f"delete s3://{self.bucket}/{full}")

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def presigned_url(self, key: str, expiry_s: int | None = None) -> str:
        return self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._key(key)},
            ExpiresIn=expiry_s or self.config.presign_expiry_s,
        )

    def check_access(self, prefix: str) -> None:
        """Bucket exists, credentials work and we may write: checked once, before any GPU time."""
        probe = self._key(f"{prefix.rstrip('/')}/.farm-write-check")
        what = f"write to s3://{self.bucket}/{probe}"
        try:
            # A PUT, not a HEAD: its error body names the problem (NoSuchBucket, SignatureDoesNotMatch,
            # ...). No long retry window here: a wrong endpoint or bucket should fail at once.
            with_retries(lambda: self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"ok"), what, 10.0)
            with_retries(lambda: self.client.delete_object(Bucket=self.bucket, Key=probe), what, 10.0)
        except StorageError as error:
            raise StorageError(f"output {self.uri} is not usable: {error}") from None
