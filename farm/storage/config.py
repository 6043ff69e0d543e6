"""Operator settings for output storage and remote inputs (environment variables, via pydantic-settings).

S3-compatible storage (`FARM_S3_*`):
    FARM_S3_ENDPOINT_URL      the endpoint (MinIO, Ceph, R2, a test server); else AWS_ENDPOINT_URL_S3
    FARM_S3_REGION            region name (default: boto3's own resolution, else us-east-1)
    FARM_S3_ADDRESSING_STYLE  path | virtual | auto (default: path with a custom endpoint, else auto)
    FARM_S3_CHECKSUMS         when_supported (boto3's default since 1.36) | when_required, for servers
                              that reject the new default checksums
    FARM_S3_CONDITIONAL_WRITES  true: commit sidecars with If-None-Match / If-Match (default)
    FARM_S3_MAX_ATTEMPTS      boto3 `standard` retry mode attempts per request (default 5)
    FARM_S3_RETRY_WINDOW_S    how long transient errors (timeouts, 5xx, throttling, refused
                              connections) are retried with backoff before an item fails (300)
    FARM_S3_MULTIPART_THRESHOLD_BYTES / FARM_S3_MULTIPART_CHUNK_BYTES / FARM_S3_MAX_CONCURRENCY
    FARM_S3_PRESIGN_EXPIRY_S  lifetime of presigned download URLs (3600)
    FARM_S3_UPLOAD_QUEUE      rendered items a worker may hold waiting for upload (2)
Credentials come from boto3's standard chain (environment, profile, instance role) and are never
read, logged or written by farm.

Image URLs (`FARM_URL_*`):
    FARM_URL_ALLOWED_HOSTS    comma-separated hosts (`*.example.com` allowed); empty: URLs disabled
    FARM_URL_MAX_BYTES, FARM_URL_TIMEOUT_S, FARM_URL_MAX_REDIRECTS
    FARM_URL_ALLOW_HTTP       accept http:// as well as https:// (default false)
    FARM_URL_ALLOW_LOOPBACK   development only: accept 127.0.0.0/8 and ::1 (never private,
                              link-local or metadata addresses)
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from farm.settings_base import FarmBaseSettings


class StorageConfig(FarmBaseSettings):
    """S3-compatible output storage (credentials come from boto3's own chain)."""

    model_config = SettingsConfigDict(env_prefix="FARM_S3_", extra="ignore")

    endpoint_url: str | None = Field(None, description="The endpoint (MinIO, Ceph, R2, a test server); else "
                                     "AWS_ENDPOINT_URL_S3, else AWS.")
    region: str | None = Field(None, description="Region name (default: boto3's own resolution, else us-east-1).")
    addressing_style: Literal["path", "virtual", "auto"] | None = Field(
        None, description="Bucket addressing (default: path with a custom endpoint, else auto).")
    checksums: Literal["when_supported", "when_required"] = Field(
        "when_supported", description="Request checksums; `when_required` for servers that reject boto3's "
        "default CRC checksums.")
    conditional_writes: bool = Field(True, description="Commit sidecars with If-None-Match / If-Match, so two "
                                     "racing renders of one item cannot both commit.")
    max_attempts: int = Field(5, ge=1, le=20, description="boto3 `standard` retry mode attempts per request.")
    connect_timeout_s: float = Field(5.0, gt=0, description="Connect timeout of one request.")
    read_timeout_s: float = Field(60.0, gt=0, description="Read timeout of one request.")
    retry_window_s: float = Field(300.0, ge=0, description="How long transient errors (timeouts, 5xx, throttling, "
                                  "refused connections) are retried with backoff before an item fails.")
    multipart_threshold_bytes: int = Field(16 * 1024 * 1024, ge=5 * 1024 * 1024,
                                           description="Uploads from this size on are multipart.")
    multipart_chunk_bytes: int = Field(16 * 1024 * 1024, ge=5 * 1024 * 1024, description="Multipart part size.")
    max_concurrency: int = Field(4, ge=1, le=64, description="Parallel parts of one upload.")
    presign_expiry_s: int = Field(3600, ge=1, le=7 * 24 * 3600, description="Lifetime of presigned download URLs.")
    upload_queue: int = Field(2, ge=1, le=64, description="Rendered items a worker may hold waiting for upload.")

    @property
    def resolved_endpoint(self) -> str | None:
        return self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or None


class UrlFetchConfig(FarmBaseSettings):
    """Image URLs in manifests, and job webhooks."""

    model_config = SettingsConfigDict(env_prefix="FARM_URL_", extra="ignore")

    allowed_hosts: str = Field("", description="Comma-separated hosts (`*.example.com` allowed); empty: URLs "
                               "and webhooks disabled.")
    max_bytes: int = Field(50 * 1024 * 1024, ge=1, description="Largest image fetched.")
    timeout_s: float = Field(20.0, gt=0, description="One fetch, at most.")
    max_redirects: int = Field(3, ge=0, le=10, description="Redirects followed (each checked as the first URL).")
    allow_http: bool = Field(False, description="Accept http:// as well as https://.")
    allow_loopback: bool = Field(False, description="Development only: accept 127.0.0.0/8 and ::1 (never private, "
                                 "link-local or metadata addresses).")

    @property
    def hosts(self) -> list[str]:
        return [h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip()]
