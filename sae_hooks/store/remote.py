"""Object stores behind fsspec URLs: clear errors, and the conditional writes of a lock object.

An S3 bucket (s3fs, the `s3` extra) offers what a lock needs: a PUT with
`If-None-Match: *` creates an object only if no object has the key, and one with
`If-Match: <etag>` replaces it only if nobody replaced it since it was read. S3
makes either atomic, so of two writers starting in the same instant exactly one
creates the lock object (sae_hooks/store/lock.py holds stores through it). Other
URLs (memory://, gs://, az://) keep the lock attribute, checked then written.

Errors are said in terms of the location and the endpoint, never the credentials:
an unreachable endpoint, refused credentials, a missing bucket and a bucket this
user may not write each get one message naming the URL.
"""

from __future__ import annotations

import errno
import json
import os
from typing import Any

#: URL schemes whose filesystem (s3fs) honours If-None-Match / If-Match on PUT.
CONDITIONAL_SCHEMES = ("s3://", "s3a://")


class ObjectStoreError(OSError):
    """An object store could not be used: unreachable, refused, or no such bucket."""


class MissingBucketError(ObjectStoreError, FileNotFoundError):
    """The bucket of a location does not exist (a FileNotFoundError too)."""


def is_conditional(location: str) -> bool:
    """Whether `location` is on an object store whose PUTs can be conditional (S3)."""
    return str(location).startswith(CONDITIONAL_SCHEMES)


def filesystem(location: str, storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    """The fsspec filesystem of a URL and the path inside it (bucket/key for S3)."""
    from fsspec.core import url_to_fs

    return url_to_fs(str(location), **(storage_options or {}))


def endpoint(storage_options: dict[str, Any] | None) -> str:
    """The endpoint a location's requests go to, for messages (no credentials in it)."""
    options = storage_options or {}
    url = options.get("endpoint_url") or (options.get("client_kwargs") or {}).get("endpoint_url")
    return str(
        url
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or "the default AWS endpoint"
    )


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def _unreachable(err: BaseException) -> bool:
    names = {type(e).__name__ for e in _chain(err)}
    return bool(
        names
        & {
            "EndpointConnectionError",
            "ConnectionError",
            "ClientConnectorError",
            "ConnectTimeoutError",
            "ServerDisconnectedError",
            "ConnectionRefusedError",
        }
    )


def explain(
    err: BaseException, where: str, storage_options: dict[str, Any] | None, *, writing: bool = False
) -> BaseException:
    """One clear error for a failed request to the object store holding `where`.

    Unreachable endpoint, refused credentials or permission, missing bucket: an
    ObjectStoreError naming the URL and the endpoint (never the keys); anything
    else is returned unchanged.
    """
    if isinstance(err, ObjectStoreError):
        return err
    at = endpoint(storage_options)
    text = str(err)
    if _unreachable(err):
        why = (
            f"cannot reach the object store at {at} for {where}: {type(err).__name__}. Check the "
            "endpoint (storage_options endpoint_url, or AWS_ENDPOINT_URL) and the network"
        )
        return _error(errno.EHOSTUNREACH, why, err)
    if isinstance(err, PermissionError):
        doing = "write to" if writing else "read"
        why = (
            f"the object store at {at} refused to let these credentials {doing} {where} "
            f"({text}). Check the keys (storage_options key / secret, or AWS_ACCESS_KEY_ID / "
            f"AWS_SECRET_ACCESS_KEY) and that they may {doing} this bucket"
        )
        return _error(errno.EACCES, why, err)
    if isinstance(err, FileNotFoundError) and "bucket" in text.lower():
        bucket = str(where).split("://", 1)[-1].split("/", 1)[0]
        why = f"the bucket {bucket!r} of {where} does not exist at {at}: create it first"
        return _error(errno.ENOENT, why, err, MissingBucketError)
    return err


def _error(
    code: int, text: str, cause: BaseException, kind: type[ObjectStoreError] = ObjectStoreError
) -> ObjectStoreError:
    made = kind(code, text)
    made.__cause__ = cause
    return made


# -- the lock object ----------------------------------------------------------------


def lock_key(where: str) -> str:
    """The lock object of the store at URL `where`: `.<name>.lock` beside it (an overwrite
    deletes the store's own prefix), as a local store's lock file."""
    parent, _, name = str(where).rstrip("/").rpartition("/")
    return f"{parent}/.{name}.lock"


class LockObject:
    """The lock object of one store on S3, created and replaced by conditional PUTs."""

    def __init__(self, where: str, storage_options: dict[str, Any] | None) -> None:
        self.where, self.url = where, lock_key(where)
        self._options = storage_options
        self.fs, path = filesystem(self.url, storage_options)
        self.bucket, _, self.key = path.partition("/")

    def _call(self, method: str, **kwargs: Any) -> Any:
        try:
            return self.fs.call_s3(method, Bucket=self.bucket, Key=self.key, **kwargs)
        except Exception as err:
            if (
                isinstance(err, (FileExistsError, FileNotFoundError))
                and "bucket" not in str(err).lower()
            ):
                raise
            if isinstance(err, OSError) and err.errno == errno.EINVAL:  # 412: a condition
                raise
            raise explain(err, self.where, self._options, writing=method != "get_object") from err

    def create(self, record: dict[str, Any]) -> bool:
        """PUT the record if no lock object exists (If-None-Match: *); False if one does."""
        try:
            self._call("put_object", Body=_body(record), IfNoneMatch="*")
        except (FileExistsError, OSError) as err:
            # 412: the object exists; 409 ConditionalRequestConflict: S3 is applying another
            # conditional write to the key right now. Either way this PUT did not create it.
            conflict = err.errno == errno.EBUSY or "ConditionalRequestConflict" in str(err)
            if isinstance(err, ObjectStoreError) or not (
                conflict or err.errno in (None, errno.EINVAL, errno.EEXIST)
            ):
                raise
            return False
        return True

    def read(self) -> tuple[dict[str, Any] | None, str | None]:
        """(holder record, ETag) of the lock object; (None, None) if there is none."""
        try:
            got = self._call("get_object")
        except FileNotFoundError:
            return None, None
        data = _read_body(self.fs, got["Body"])
        try:
            holder = json.loads(data).get("writer")
        except (ValueError, AttributeError):
            holder = None
        return (holder if isinstance(holder, dict) else {}), got["ETag"]

    def replace(self, record: dict[str, Any], etag: str) -> bool:
        """PUT the record over the object with `etag` (If-Match); False if it changed."""
        try:
            self._call("put_object", Body=_body(record), IfMatch=etag)
        except OSError as err:
            if isinstance(err, ObjectStoreError) or err.errno not in (errno.EINVAL, errno.ENOENT):
                raise
            return False
        return True

    def delete(self) -> None:
        self._call("delete_object")


def _body(record: dict[str, Any]) -> bytes:
    return json.dumps({"writer": record}).encode()


def _read_body(fs: Any, body: Any) -> bytes:
    """An aiobotocore response body, read on s3fs's event loop."""
    from fsspec.asyn import sync

    async def read() -> bytes:
        async with body as stream:
            return await stream.read()

    return sync(fs.loop, read)
