"""S3Store: the object store as an S3-compatible bucket (AWS, MinIO, R2, moto) through boto3.

One boto3 client per process, shared by its threads (boto3 clients are thread-safe;
building one costs 50-300 ms, so never per call nor per worker thread). Small objects go up in
one PUT; files go through boto3's transfer manager (multipart above a threshold),
streamed from disk. S3 PUTs are atomic: a reader sees the whole object or none.
"""

from __future__ import annotations

import base64
import os
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from aether_prefect.errors import StoreError
from aether_prefect.services.stores.base import (
    HashingReader, InvalidKey, ObjectNotFound, ObjectStore, SweepReport, check_age, check_key,
)

if TYPE_CHECKING:
    from aether_prefect.blocks import AetherObjectStore

_MiB = 1024 * 1024
#: Files at or above this size are uploaded in parts; smaller ones in a single PUT.
MULTIPART_THRESHOLD = 8 * _MiB
#: Part size of multipart uploads (files are read part by part from disk, never whole).
MULTIPART_CHUNKSIZE = 8 * _MiB
MAX_CONCURRENCY = 10
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
#: Where ``put_file_addressed`` uploads before it knows the content's key (a lifecycle rule may expire it).
TMP_PREFIX = ".tmp/uploads"
_COPY_LIMIT = 5 * 1024 * _MiB  # CopyObject's maximum size


def _b64(sha_hex: str) -> str:
    """S3's form of a sha256 checksum (base64 of the digest)."""
    return base64.b64encode(bytes.fromhex(sha_hex)).decode()


class S3Store(ObjectStore):
    """Objects under ``s3://bucket/prefix/``; credentials from the block or boto3's default chain."""

    scheme = "s3"
    #: ``list_keys(start_after=...)`` costs one request whatever lies before the key (the index relies on it).
    lists_after_cheaply = True

    def __init__(
        self,
        bucket: str,
        prefix: str = "aether",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: Any = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self._access_key_id = aws_access_key_id
        self._secret = aws_secret_access_key  # SecretStr (or None): revealed only when building a client
        self._client_lock = threading.Lock()
        self._client_obj: Any = None
        self._client_pid: int | None = None
        self._conditional_put = True  # cleared if the endpoint rejects If-None-Match

    @classmethod
    def from_block(cls, block: "AetherObjectStore") -> "S3Store":
        """Build a store from an ``AetherObjectStore(backend="s3", ...)`` block."""
        if not block.bucket:
            raise StoreError("AetherObjectStore(backend='s3') needs a bucket: set bucket='my-bucket'")
        return cls(
            block.bucket,
            block.prefix,
            endpoint_url=block.endpoint_url,
            region=block.region,
            aws_access_key_id=block.aws_access_key_id,
            aws_secret_access_key=block.aws_secret_access_key,
        )

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint_url={self.endpoint_url!r})"

    # -- clients ------------------------------------------------------------------

    def _client(self) -> Any:
        """This process's boto3 client, built once under a lock (a forked child builds its own)."""
        pid = os.getpid()
        client = self._client_obj  # fast path without the lock
        if client is not None and self._client_pid == pid:
            return client
        with self._client_lock:
            if self._client_obj is not None and self._client_pid == pid:
                return self._client_obj
            client = self._build_client()
            self._client_obj, self._client_pid = client, pid
            return client

    def _build_client(self) -> Any:
        import boto3
        from botocore.config import Config

        secret = self._secret.get_secret_value() if hasattr(self._secret, "get_secret_value") else self._secret
        creds: dict[str, Any] = {}
        if self._access_key_id and secret:
            creds = {"aws_access_key_id": self._access_key_id, "aws_secret_access_key": secret}
        session = boto3.session.Session(region_name=self.region, **creds)
        client = session.client(
            "s3",
            endpoint_url=self.endpoint_url,
            config=Config(
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                max_pool_connections=32,
            ),
        )
        return client

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=MULTIPART_CHUNKSIZE,
            max_concurrency=MAX_CONCURRENCY,
            use_threads=True,
        )

    def close(self) -> None:
        with self._client_lock:
            client, self._client_obj, self._client_pid = self._client_obj, None, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    # -- keys -----------------------------------------------------------------------

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _strip(self, s3_key: str) -> str:
        return s3_key[len(self.prefix) + 1 :] if self.prefix else s3_key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def key_from_uri(self, uri: str) -> str:
        base = f"s3://{self.bucket}/" + (f"{self.prefix}/" if self.prefix else "")
        if not isinstance(uri, str) or not uri.startswith(base):
            raise InvalidKey(f"{uri!r} is not inside this S3 store ({base})")
        return check_key(unquote(uri[len(base) :]))

    # -- errors -----------------------------------------------------------------------

    def _error(self, exc: Exception, action: str, key: str) -> Exception:
        """Map a botocore/boto3 error to ObjectNotFound or StoreError; the message never holds credentials."""
        from botocore.exceptions import BotoCoreError, ClientError

        where = f"s3://{self.bucket}/" + "/".join(p for p in (self.prefix, key) if p)
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _NOT_FOUND or status == 404:
                return ObjectNotFound(f"no object at {key!r} in {where}")
            return StoreError(
                f"S3 {action} of {where} failed: {code or status} {err.get('Message', '')}".rstrip()
                + ". Check the bucket, its permissions and the credentials of the AetherObjectStore block."
            )
        if isinstance(exc, BotoCoreError):
            return StoreError(
                f"S3 {action} of {where} failed: {type(exc).__name__}: {_safe(exc)}. "
                f"Is the endpoint {self.endpoint_url or 'AWS S3'} reachable? Nothing was committed by this call."
            )
        return exc

    def _call(self, action: str, key: str, fn: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, action, key) from None

    # -- writes -----------------------------------------------------------------------

    def put_bytes(
        self, key: str, data: bytes, *, content_type: str | None = None, sha256: str | None = None
    ) -> None:
        extra: dict[str, Any] = {"ContentType": content_type} if content_type else {}
        if sha256:
            extra["ChecksumSHA256"] = _b64(sha256)  # S3 rejects the PUT if the bytes it got differ
        self._call("put", key, self._client().put_object, Bucket=self.bucket, Key=self._key(key), Body=data, **extra)

    def put_file(self, key: str, path: Path, *, content_type: str | None = None) -> None:
        from boto3.exceptions import S3UploadFailedError

        s3_key = self._key(key)
        extra = {"ContentType": content_type} if content_type else None
        try:
            self._call(
                "upload", key, self._client().upload_file,
                Filename=str(path), Bucket=self.bucket, Key=s3_key, ExtraArgs=extra, Config=self._transfer_config(),
            )
        except S3UploadFailedError as exc:
            raise StoreError(
                f"S3 upload of s3://{self.bucket}/{s3_key} failed: {_safe(exc)}. "
                f"Is the endpoint {self.endpoint_url or 'AWS S3'} reachable? Nothing was committed."
            ) from None

    def put_file_addressed(
        self, path: Path, key_of: Callable[[str], str], *, content_type: str | None = None
    ) -> tuple[str, int]:
        """One read of ``path``: uploaded to a temp key with S3 SHA256 checksums (S3 verifies every part)
        while hashed here, then copied server-side to ``key_of(sha)`` unless an object S3 itself verified
        as exactly those bytes is already there; the temp key is deleted."""
        from boto3.exceptions import S3UploadFailedError

        tmp = f"{TMP_PREFIX}/{uuid.uuid4().hex}"
        client = self._client()
        extra: dict[str, Any] = {"ChecksumAlgorithm": "SHA256"}
        if content_type:
            extra["ContentType"] = content_type
        try:
            with open(path, "rb") as f:
                reader = HashingReader(f)
                self._call(
                    "upload", tmp, client.upload_fileobj,
                    Fileobj=reader, Bucket=self.bucket, Key=self._key(tmp), ExtraArgs=extra, Config=self._transfer_config(),
                )
        except S3UploadFailedError as exc:
            raise StoreError(
                f"S3 upload of {path.name} to s3://{self.bucket}/{self._key(tmp)} failed: {_safe(exc)}. "
                f"Is the endpoint {self.endpoint_url or 'AWS S3'} reachable? Nothing was committed."
            ) from None
        sha = reader.hexdigest()
        key = key_of(sha)
        try:
            if not self._holds_verified(key, sha):
                source = {"Bucket": self.bucket, "Key": self._key(tmp)}
                if reader.size < _COPY_LIMIT:  # one CopyObject (S3 computes a full-object SHA256 of the copy)
                    self._call(
                        "copy", key, client.copy_object,
                        CopySource=source, Bucket=self.bucket, Key=self._key(key), ChecksumAlgorithm="SHA256",
                    )
                else:  # the transfer manager copies part by part
                    self._call(
                        "copy", key, client.copy, CopySource=source, Bucket=self.bucket, Key=self._key(key),
                        ExtraArgs={"ChecksumAlgorithm": "SHA256"}, Config=self._transfer_config(),
                    )
        finally:
            try:
                self.delete(tmp)
            except StoreError:
                pass  # an orphan temp object is harmless (never listed by services)
        return sha, reader.size

    def _holds_verified(self, key: str, sha: str) -> bool:
        """True if ``key`` exists with a full-object SHA256 checksum (verified by S3 on write) equal to ``sha``."""
        try:
            head = self._call(
                "head", key, self._client().head_object, Bucket=self.bucket, Key=self._key(key), ChecksumMode="ENABLED"
            )
        except ObjectNotFound:
            return False
        return bool(head.get("ChecksumSHA256") == _b64(sha))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        client, s3_key = self._client(), self._key(key)
        if self._conditional_put:
            try:
                client.put_object(Bucket=self.bucket, Key=s3_key, Body=data, IfNoneMatch="*")
                return True
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if status == 412 or code == "PreconditionFailed":
                    return False
                if status == 409 or code == "ConditionalRequestConflict":
                    return False  # a concurrent conditional write of this key is winning
                if status != 501 and code != "NotImplemented":
                    raise self._error(exc, "conditional put", key) from None
                self._conditional_put = False  # endpoint without If-None-Match: fall back below
            except BotoCoreError as exc:
                raise self._error(exc, "conditional put", key) from None
        if self.exists(key):
            return False
        self.put_bytes(key, data)
        return True

    # -- reads ------------------------------------------------------------------------

    def get_bytes(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self._client().get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            try:
                return body.read()  # type: ignore[no-any-return]
            finally:
                body.close()
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "get", key) from None

    def download_file(self, key: str, dest: Path) -> None:
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".dl-")
        os.close(fd)
        try:
            self._call(
                "download", key, self._client().download_file,
                Bucket=self.bucket, Key=self._key(key), Filename=tmp, Config=self._transfer_config(),
            )
            os.replace(tmp, dest)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def _head(self, key: str) -> dict[str, Any]:
        return self._call("head", key, self._client().head_object, Bucket=self.bucket, Key=self._key(key))  # type: ignore[no-any-return]

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
            return True
        except ObjectNotFound:
            return False

    def size(self, key: str) -> int:
        return int(self._head(key)["ContentLength"])

    def delete(self, key: str) -> None:
        self._call("delete", key, self._client().delete_object, Bucket=self.bucket, Key=self._key(key))

    def list_keys(self, prefix: str, *, start_after: str | None = None) -> Iterator[str]:
        folder = prefix.rpartition("/")[0]
        if folder:
            check_key(folder)
        base = f"{self.prefix}/" if self.prefix else ""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": base + prefix}
        if start_after:
            kwargs["StartAfter"] = base + start_after
        return self._pages(kwargs, prefix)

    def sweep(self, older_than_s: float, *, dry_run: bool = False) -> SweepReport:
        """Delete ``.tmp/uploads`` objects and abort multipart uploads under this store's prefix started more than
        ``older_than_s`` ago (what a writer killed mid-upload leaves, and S3 bills for). A lifecycle rule on the
        bucket does the same without a command.

        Example: ``store.sweep(86400)  # SweepReport(temp_objects=2, multipart_uploads=1)``
        """
        from datetime import datetime, timedelta, timezone

        from botocore.exceptions import BotoCoreError, ClientError

        cutoff = datetime.now(timezone.utc) - timedelta(seconds=check_age(older_than_s))
        base = f"{self.prefix}/" if self.prefix else ""
        client, temps, uploads = self._client(), 0, 0
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"{base}{TMP_PREFIX}/"):
                for obj in page.get("Contents", ()):
                    if obj["LastModified"] < cutoff:
                        if not dry_run:
                            client.delete_object(Bucket=self.bucket, Key=obj["Key"])
                        temps += 1
            for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=base):
                for up in page.get("Uploads", ()):
                    if up["Initiated"] < cutoff:
                        if not dry_run:
                            client.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
                        uploads += 1
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "sweep", TMP_PREFIX) from None
        return SweepReport(temp_objects=temps, multipart_uploads=uploads)

    def _pages(self, kwargs: dict[str, Any], prefix: str) -> Iterator[str]:
        """Keys page by page (1000 per LIST): a caller that stops early sends no further request."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            for page in self._client().get_paginator("list_objects_v2").paginate(**kwargs):
                for obj in page.get("Contents", ()):
                    yield self._strip(obj["Key"])
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "list", prefix) from None


def _safe(exc: BaseException) -> str:
    """The error text, with anything that looks like a credential query string removed."""
    text = str(exc)
    for marker in ("X-Amz-Credential", "X-Amz-Signature", "AWSAccessKeyId", "Signature="):
        if marker in text:
            text = text.split(marker)[0] + "[redacted]"
    return text


__all__ = ["S3Store"]
