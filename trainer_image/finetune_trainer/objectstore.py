"""The S3 client of ``s3://bucket/prefix`` locations, and its failures as the trainer's errors.

boto3 (the AWS SDK) because it reads configuration exactly as every AWS tool does: ``AWS_ENDPOINT_URL``,
``AWS_REGION``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, profiles, a pod's web identity (IRSA); so
`finetune run` works with the environment a user already has, and in a pod the operator only sets those variables
from the job's Secret. The job's ``storage.s3`` (endpoint, region, addressing style) wins over the environment.

Failures are sorted by what a retry can fix: refused credentials or a missing bucket are permanent (the message
names the Secret's key or the bucket; never a credential's value), an unreachable or failing server is retryable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from finetune_trainer.config import TrainerConfig
from finetune_trainer.errors import PermanentError, StorageError, TrainerError
from finetune_trainer.locations import S3_SCHEME
from finetune_trainer.output_spec import S3Spec

log = logging.getLogger(__name__)

SECRET_FIELD = "storage.s3.secretRef"
_ACCESS_KEY_CODES = ("InvalidAccessKeyId",)
_SECRET_KEY_CODES = ("SignatureDoesNotMatch",)
_DENIED_CODES = ("AccessDenied", "Forbidden", "403", "InvalidToken", "ExpiredToken")
_MISSING_BUCKET_CODES = ("NoSuchBucket",)


class StorageAccessDenied(PermanentError):
    reason = "StorageAccessDenied"


class BucketNotFound(PermanentError):
    reason = "BucketNotFound"


class StorageUnavailable(StorageError):
    reason = "StorageUnavailable"


STORAGE_FAILURES = (StorageAccessDenied, BucketNotFound, StorageUnavailable)


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    prefix: str  # without a leading or trailing slash; "" for the whole bucket

    @classmethod
    def parse(cls, location: str) -> S3Uri:
        bucket, _, prefix = location[len(S3_SCHEME):].partition("/")
        return cls(bucket, prefix.strip("/"))

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def child(self, relative: str) -> S3Uri:
        return S3Uri(self.bucket, self.key(relative.strip("/")))

    def __str__(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{S3_SCHEME}{self.bucket}"


@dataclass(frozen=True)
class Object:
    key: str
    size: int
    etag: str


class Store:
    """One S3 client for a run; counts the bytes it downloads (the cache's measure)."""

    def __init__(self, spec: S3Spec | None):
        import boto3
        from botocore.config import Config

        self.spec = spec or S3Spec()
        style = self.spec.addressing_style or "auto"
        # Few, short retries: an unreachable endpoint should become the retryable exit code within seconds, the
        # operator's backoff does the rest.
        config = Config(s3={"addressing_style": style}, connect_timeout=5, read_timeout=60,
                        retries={"max_attempts": 3, "mode": "standard"})
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=self.spec.endpoint or None, region_name=self.spec.region or None, config=config)
        self.downloaded = 0

    @property
    def endpoint(self) -> str:
        return self.client.meta.endpoint_url

    def list(self, uri: S3Uri, field: str) -> list[Object]:
        """The objects under ``uri`` as a folder (``prefix/...``), or the one object named ``uri``."""
        found: list[Object] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=uri.bucket, Prefix=uri.prefix)
            for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"]
                    if not uri.prefix or key == uri.prefix or key.startswith(uri.prefix + "/"):
                        found.append(Object(key, item["Size"], item.get("ETag", "").strip('"')))
        except Exception as exc:
            raise self.error(exc, uri, field) from exc
        return found

    def download(self, obj: Object, uri: S3Uri, dest: Path, field: str) -> int:
        """Stream one object into ``dest`` (a new file); returns its size."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            body = self.client.get_object(Bucket=uri.bucket, Key=obj.key)["Body"]
            size = 0
            with open(dest, "wb") as f:
                for chunk in body.iter_chunks(1 << 20):
                    f.write(chunk)
                    size += len(chunk)
        except OSError:
            raise
        except Exception as exc:
            raise self.error(exc, uri, field) from exc
        self.downloaded += size
        return size

    def upload(self, path: Path, uri: S3Uri, field: str) -> None:
        try:
            self.client.upload_file(str(path), uri.bucket, uri.prefix)
        except Exception as exc:
            raise self.error(exc, uri, field) from exc

    def put(self, uri: S3Uri, data: bytes, field: str) -> None:
        try:
            self.client.put_object(Bucket=uri.bucket, Key=uri.prefix, Body=data)
        except Exception as exc:
            raise self.error(exc, uri, field) from exc

    def delete(self, bucket: str, keys: list[str], field: str) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": key} for key in keys[start:start + 1000]]
            try:
                self.client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            except Exception as exc:
                raise self.error(exc, S3Uri(bucket, ""), field) from exc

    # ------------------------------------------------------------------------------------ failures

    def error(self, exc: Exception, uri: S3Uri, field: str) -> TrainerError:
        """``exc`` from botocore as the trainer's error: permanent when a retry cannot help."""
        from botocore.exceptions import ClientError, NoCredentialsError

        if isinstance(exc, NoCredentialsError):
            return StorageAccessDenied(f"{field} {uri}: no S3 credentials; set {SECRET_FIELD} (or "
                                       "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY outside a cluster)", field=field)
        if not isinstance(exc, ClientError):  # connection refused, DNS, timeouts, a connection cut
            return StorageUnavailable(f"{field} {uri}: cannot reach the S3 endpoint {self.endpoint} "
                                      f"({type(exc).__name__}: {exc})", field=field)
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in _MISSING_BUCKET_CODES:
            return BucketNotFound(f'{field} {uri}: bucket "{uri.bucket}" does not exist at {self.endpoint}; '
                                  "create it or correct the bucket name", field=field)
        if code in _ACCESS_KEY_CODES:
            return StorageAccessDenied(f"{field} {uri}: the S3 server does not know the access key id ({code}); "
                                       f"check {self._key('access')}", field=SECRET_FIELD)
        if code in _SECRET_KEY_CODES:
            return StorageAccessDenied(f"{field} {uri}: the secret access key does not match the access key id "
                                       f"({code}); check {self._key('secret')}", field=SECRET_FIELD)
        if code in _DENIED_CODES or status in (401, 403):
            return StorageAccessDenied(f"{field} {uri}: access denied ({code}); the credentials in "
                                       f"{self._key('access')} may not use bucket \"{uri.bucket}\"", field=SECRET_FIELD)
        if status >= 500 or code in ("SlowDown", "RequestTimeout", "ServiceUnavailable", "InternalError"):
            return StorageUnavailable(f"{field} {uri}: the S3 server failed ({code or status}); retrying may help",
                                      field=field)
        return PermanentError(f"{field} {uri}: the S3 server refused the request ({code or status}: "
                              f"{exc.response.get('Error', {}).get('Message', '')})", field=field)

    def _key(self, which: str) -> str:
        """Where the credential came from, by name: the Secret's key in a cluster, else the variable."""
        ref = self.spec.secret_ref
        variable = "AWS_ACCESS_KEY_ID" if which == "access" else "AWS_SECRET_ACCESS_KEY"
        if ref is None:
            return f"the environment variable {variable}"
        key = ref.access_key_id_key if which == "access" else ref.secret_access_key_key
        return f'key "{key}" of Secret "{ref.name}" ({SECRET_FIELD})'


def is_s3(location: str | None) -> bool:
    return bool(location) and location.startswith(S3_SCHEME)


def store_for(config: TrainerConfig) -> Store | None:
    """The run's S3 client when any of its locations is ``s3://`` (boto3 is imported only then)."""
    if not any(is_s3(loc) for loc in (config.model.source, config.dataset.source, config.output.location)):
        return None
    return Store(config.storage.s3 if config.storage else None)
