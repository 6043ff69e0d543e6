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
from pydantic_settings import BaseSettings, SettingsConfigDict


class StorageConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FARM_S3_", extra="ignore")

    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: Literal["path", "virtual", "auto"] | None = None
    checksums: Literal["when_supported", "when_required"] = "when_supported"
    conditional_writes: bool = True
    max_attempts: int = Field(default=5, ge=1, le=20)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=60.0, gt=0)
    retry_window_s: float = Field(default=300.0, ge=0)
    multipart_threshold_bytes: int = Field(default=16 * 1024 * 1024, ge=5 * 1024 * 1024)
    multipart_chunk_bytes: int = Field(default=16 * 1024 * 1024, ge=5 * 1024 * 1024)
    max_concurrency: int = Field(default=4, ge=1, le=64)
    presign_expiry_s: int = Field(default=3600, ge=1, le=7 * 24 * 3600)
    upload_queue: int = Field(default=2, ge=1, le=64)

    @property
    def resolved_endpoint(self) -> str | None:
        return self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or None


class UrlFetchConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FARM_URL_", extra="ignore")

    allowed_hosts: str = ""
    max_bytes: int = Field(default=50 * 1024 * 1024, ge=1)
    timeout_s: float = Field(default=20.0, gt=0)
    max_redirects: int = Field(default=3, ge=0, le=10)
    allow_http: bool = False
    allow_loopback: bool = False

    @property
    def hosts(self) -> list[str]:
        return [h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip()]
