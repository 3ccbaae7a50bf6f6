"""A small client of the OCI distribution API, enough to push an artifact: blobs and one manifest.

Why our own and not oras-py: pushing is five requests (HEAD a blob to skip it, POST+PUT to upload it, PUT the
manifest, and the token dance of a 401), the standard library does them, and the trainer image gains no dependency
whose error handling we would have to translate anyway. What matters here is that every failure says which of the
three things a user can act on went wrong, and whether a retry can help:

- ``RegistryAuthError``: the registry refused the credentials (401/403 after authenticating, or no credentials
  for a registry that wants them). Permanent.
- ``RegistryRejected``: the registry understood and said no (unknown or invalid repository, bad tag, manifest
  refused). Permanent.
- ``RegistryUnreachable``: connection refused, DNS, timeouts, 5xx, 429. Retryable: the next attempt pushes again,
  skipping the blobs that already arrived.

Auth: anonymous first; a ``Bearer`` challenge is answered with a token from its realm (HTTP basic credentials when
there are some, scope ``repository:<repo>:pull,push``), a ``Basic`` challenge with the credentials. Credentials
never appear in a message or a log line. Plain HTTP only when the reference's registry is ``insecure``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from finetune_trainer.spec_base import OCI_REFERENCE_PATTERN

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
TIMEOUT = 60  # seconds per request; a blob upload streams, so this bounds silence, not the whole upload


class RegistryError(Exception):
    """A push failed; ``str`` says why without credentials."""


class RegistryAuthError(RegistryError):
    pass


class RegistryRejected(RegistryError):
    pass


class RegistryUnreachable(RegistryError):
    pass


@dataclass(frozen=True)
class Reference:
    registry: str  # host[:port]
    repository: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> Reference:
        if not re.match(OCI_REFERENCE_PATTERN, text):
            raise ValueError(f"{text!r} is not registry/repository:tag (e.g. registry.example.com/team/model:v1)")
        registry, rest = text.split("/", 1)
        repository, tag = rest.rsplit(":", 1)
        return cls(registry, repository, tag)

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}:{self.tag}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


class Registry:
    """One repository of one registry, with the credentials (``user``, ``password``) to push to it, if any."""

    def __init__(self, ref: Reference, credentials: tuple[str, str] | None, insecure: bool = False):
        self.ref = ref
        self.base = f"{'http' if insecure else 'https'}://{ref.registry}"
        self.credentials = credentials
        self.authorization: str | None = None

    # ------------------------------------------------------------------------------------------ the API
    def ping(self) -> None:
        """Authenticate for push now (pre-flight: bad credentials fail before training, not after)."""
        self._request("GET", f"/v2/{self.ref.repository}/tags/list", ok=(200, 404))

    def has_blob(self, digest: str) -> bool:
        return self._request("HEAD", f"/v2/{self.ref.repository}/blobs/{digest}", ok=(200, 404))[0] == 200

    def upload_blob(self, digest: str, size: int, body: BinaryIO | bytes) -> None:
        """Monolithic upload: POST opens a session, PUT sends the bytes with their digest (the registry checks it)."""
        _, headers, _ = self._request("POST", f"/v2/{self.ref.repository}/blobs/uploads/", ok=(202,))
        location = urllib.parse.urljoin(self.base + "/", headers.get("Location", ""))
        if not location.startswith(self.base + "/"):
            raise RegistryRejected(f"registry {self.ref.registry} sent an upload location on another host")
        joiner = "&" if "?" in location else "?"
        self._request("PUT", f"{location[len(self.base):]}{joiner}digest={urllib.parse.quote(digest)}",
                      body=body, ok=(201,),
                      headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})

    def put_manifest(self, manifest: bytes, media_type: str = MANIFEST_MEDIA_TYPE) -> str:
        """PUT the manifest under the tag; returns its digest (ours, checked against the registry's)."""
        digest = f"sha256:{hashlib.sha256(manifest).hexdigest()}"
        _, headers, _ = self._request("PUT", f"/v2/{self.ref.repository}/manifests/{self.ref.tag}", body=manifest,
                                      ok=(201,), headers={"Content-Type": media_type})
        said = headers.get("Docker-Content-Digest")
        if said and said != digest:
            raise RegistryRejected(f"registry {self.ref.registry} stored the manifest as {said}, not {digest}")
        return digest

    # ------------------------------------------------------------------------------------------ HTTP and auth
    def _request(self, method: str, path: str, *, ok: tuple[int, ...], body: BinaryIO | bytes | None = None,
                 headers: dict[str, str] | None = None, retried: bool = False) -> tuple[int, Any, bytes]:
        if hasattr(body, "seek"):
            body.seek(0)  # type: ignore[union-attr]  # a file sent again after a 401
        request = urllib.request.Request(self.base + path, data=body, method=method, headers=dict(headers or {}))
        if self.authorization:
            request.add_header("Authorization", self.authorization)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            status, reply_headers, reply = exc.code, exc.headers, exc.read()
        except OSError as exc:  # URLError, refused, reset, timeouts, TLS
            reason = getattr(exc, "reason", exc)
            raise RegistryUnreachable(f"registry {self.ref.registry} unreachable ({reason})") from None
        if status in ok:
            return status, reply_headers, reply
        if status == 401 and not retried:  # anonymous, or a token that expired: authenticate and try once more
            self._authenticate(reply_headers.get("WWW-Authenticate", ""))
            return self._request(method, path, ok=ok, body=body, headers=headers, retried=True)
        raise self._error(method, status, reply)

    def _authenticate(self, challenge: str) -> None:
        scheme, _, params = challenge.partition(" ")
        if scheme.lower() == "basic" and self.credentials:
            self.authorization = "Basic " + _basic(self.credentials)
            return
        if scheme.lower() != "bearer":
            raise self._no_credentials()
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        query = {"scope": f"repository:{self.ref.repository}:pull,push"}
        if fields.get("service"):
            query["service"] = fields["service"]
        request = urllib.request.Request(f"{fields.get('realm', '')}?{urllib.parse.urlencode(query)}")
        if self.credentials:
            request.add_header("Authorization", "Basic " + _basic(self.credentials))
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise (self._refused(exc.code) if self.credentials else self._no_credentials()) from None
            raise self._error("GET", exc.code, exc.read()) from None
        except (OSError, ValueError) as exc:
            raise RegistryUnreachable(f"token service of registry {self.ref.registry} failed ({exc})") from None
        token = reply.get("token") or reply.get("access_token")
        if not token:
            raise RegistryUnreachable(f"token service of registry {self.ref.registry} returned no token")
        self.authorization = f"Bearer {token}"

    def _error(self, method: str, status: int, reply: bytes) -> RegistryError:
        if status in (401, 403):
            return self._refused(status) if self.credentials else self._no_credentials()
        if status == 429 or status >= 500:
            return RegistryUnreachable(f"registry {self.ref.registry} answered {method} for repository "
                                       f"{self.ref.repository} with HTTP {status}")
        codes = _error_codes(reply)
        if "DENIED" in codes or "UNAUTHORIZED" in codes:
            return self._refused(status)
        what = "unknown repository" if "NAME_UNKNOWN" in codes else (", ".join(codes) or f"HTTP {status}")
        return RegistryRejected(f"registry {self.ref.registry} refused {method} for repository "
                                f"{self.ref.repository}: {what}")

    def _refused(self, status: int) -> RegistryAuthError:
        return RegistryAuthError(f"registry {self.ref.registry} refused the credentials for repository "
                                 f"{self.ref.repository} (HTTP {status})")

    def _no_credentials(self) -> RegistryAuthError:
        return RegistryAuthError(f"registry {self.ref.registry} requires credentials for repository "
                                 f"{self.ref.repository} and none were given for it")


def _basic(credentials: tuple[str, str]) -> str:
    return base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()


def _error_codes(reply: bytes) -> list[str]:
    """The distribution spec's error codes in a reply body ({"errors": [{"code": ...}]})."""
    try:
        return [str(e.get("code")) for e in json.loads(reply).get("errors", [])]
    except (ValueError, AttributeError):
        return []
