"""The one module that talks to the Kubernetes API (Kopf's own watching aside).

Objects travel as plain dicts in their wire form, the same dicts render.py and events.py build, through the
kubernetes client's transport (auth, TLS, kubeconfig or in-cluster config) without its typed models. Errors become a
small hierarchy the reconciler can act on: ``Unavailable`` (connection lost, 5xx, 429: retry later),
``NotFound``, ``Conflict``, ``NotConfigured`` (no kubeconfig: the cluster commands of `finetune`), and ``KubeError``
for the rest (e.g. 403 from a too narrow Role).
"""

from __future__ import annotations

import itertools
import json
import logging
from typing import Any, Iterator

import kopf
import orjson
import urllib3
from kubernetes import config as kube_config
from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException

from finetune_operator.api import API_VERSION, GROUP, KIND, PLURAL
from finetune_operator.kueue import LABEL_JOB_UID, workloads_path
from finetune_operator.names import LABEL_FINETUNEJOB

log = logging.getLogger(__name__)

CRD_NAME = f"{PLURAL}.{GROUP}"
LEASE_API = "coordination.k8s.io/v1"  # leader election's Lease (leader.py)
# (connect, read) seconds: a hung apiserver must not hold a reconcile thread for long.
REQUEST_TIMEOUT = (5, 30)
IN_CLUSTER_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
# Items per page of a full listing: bounds the size of one answer in a large cluster.
LIST_PAGE = 500
# A watch's read timeout is its server-side timeoutSeconds plus this: the server ends a quiet watch first.
WATCH_GRACE = 30

_COLLECTIONS = {
    ("v1", "ConfigMap"): "/api/v1/namespaces/{namespace}/configmaps",
    ("v1", "Service"): "/api/v1/namespaces/{namespace}/services",
    ("v1", "Pod"): "/api/v1/namespaces/{namespace}/pods",
    ("v1", "Event"): "/api/v1/namespaces/{namespace}/events",
    ("batch/v1", "Job"): "/apis/batch/v1/namespaces/{namespace}/jobs",
    (LEASE_API, "Lease"): f"/apis/{LEASE_API}/namespaces/{{namespace}}/leases",
    (API_VERSION, KIND): f"/apis/{API_VERSION}/namespaces/{{namespace}}/{PLURAL}",
}


class EndlessBackoff:
    """Delays between retries of a failed API request: growing, then every 30 s for as long as it takes."""

    def __iter__(self) -> Iterator[float]:
        yield from (1, 2, 4, 8, 15)
        yield from itertools.repeat(30)


class KubeError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"{status} {message}" if status else message)
        self.status = status


class Unavailable(KubeError):
    """The API could not be reached or could not answer now; the same call may succeed later."""


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    pass


class NotConfigured(KubeError):
    """No kubeconfig and not in a pod: there is no cluster to talk to."""


class Invalid(KubeError):
    """The API server refused the object itself (400/422): sending it again cannot succeed."""


def _error(status: int, body: bytes | str | None) -> KubeError:
    try:
        message = json.loads(body or b"{}").get("message") or ""
    except ValueError:
        message = (body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or ""))[:300]
    if status in (404, 410):
        return NotFound(status, message)
    if status == 409:
        return Conflict(status, message)
    if status in (400, 422):
        return Invalid(status, message)
    if status == 0 or status == 429 or status >= 500:
        return Unavailable(status, message or "the API server did not answer")
    return KubeError(status, message)


def collection_path(api_version: str, kind: str, namespace: str | None) -> str:
    """The collection in ``namespace``; None: across all namespaces."""
    path = _COLLECTIONS[(api_version, kind)]
    return path.replace("/namespaces/{namespace}", "") if namespace is None else path.format(namespace=namespace)


def merge_patch(old: Any, new: Any) -> Any:
    """The RFC 7386 merge patch that turns ``old`` into ``new`` ({} when they are equal)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value)
    return patch


def default_namespace(kubeconfig: str | None = None) -> str:
    """The namespace a person means without saying: their kubeconfig context's (as kubectl), else the pod's own."""
    try:
        _, active = kube_config.list_kube_config_contexts(config_file=kubeconfig)
        return (active or {}).get("context", {}).get("namespace") or "default"
    except (kube_config.ConfigException, OSError):
        try:
            with open(IN_CLUSTER_NAMESPACE) as file:
                return file.read().strip() or "default"
        except OSError:
            return "default"


class Kube:
    def __init__(self, api: ApiClient):
        self.api = api

    @classmethod
    def connect(cls, kubeconfig: str | None = None, pool_size: int | None = None) -> Kube:
        """From ``kubeconfig`` if given, else the pod's ServiceAccount, else $KUBECONFIG or ~/.kube/config.

        ``pool_size``: connections kept open to the API server. Give one per thread that may call at once (the
        handler threads, the poller's): the client's default is 5 per CPU, and a thread that finds the pool empty
        opens a connection (a new TLS handshake) that is then discarded.
        """
        configuration = Configuration()
        if pool_size:
            configuration.connection_pool_maxsize = pool_size
        try:
            if kubeconfig:
                kube_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
            else:
                try:
                    kube_config.load_incluster_config(client_configuration=configuration)
                except kube_config.ConfigException:
                    kube_config.load_kube_config(client_configuration=configuration)
        except (kube_config.ConfigException, OSError) as error:
            raise NotConfigured(0, f"no cluster to talk to ({error}); set --kubeconfig or $KUBECONFIG") from None
        return cls(ApiClient(configuration))

    def connection_info(self) -> kopf.ConnectionInfo:
        """The same identity for Kopf's watches (its login handler), so one RBAC subject does everything."""
        config = self.api.configuration
        # Asking for the key runs the client's refresh hook: a re-login after a 401 gets a rotated token.
        header = config.get_api_key_with_prefix("BearerToken") or ""
        scheme, _, token = header.rpartition(" ")
        return kopf.ConnectionInfo(
            server=config.host,
            ca_path=config.ssl_ca_cert,
            insecure=not config.verify_ssl,
            username=config.username or None,
            password=config.password or None,
            scheme=scheme or None,
            token=token or None,
            certificate_path=config.cert_file,
            private_key_path=config.key_file,
        )

    # ------------------------------------------------------------------------------------------ transport

    def _call(self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None,
              content_type: str = "application/json", accept: str = "application/json",
              timeout: tuple[float, float | None] = REQUEST_TIMEOUT) -> Any:
        """The response, its body not yet read (the caller reads it whole or streams it)."""
        headers = {"Accept": accept, "Content-Type": content_type}
        request = self.api.param_serialize(method, path, query_params=list((query or {}).items()),
                                           header_params=headers, body=body, auth_settings=["BearerToken"])
        try:
            response = self.api.call_api(*request, _request_timeout=timeout)
            if not 200 <= response.status <= 299:
                response.read()
                raise _error(response.status, response.data)
            return response
        except ApiException as error:  # raised by the transport for TLS and connection failures
            raise _error(error.status or 0, error.body or error.reason) from None
        except urllib3.exceptions.HTTPError as error:
            raise Unavailable(0, f"cannot reach the API server: {error}") from None

    def _request(self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None,
                 content_type: str = "application/json",
                 timeout: tuple[float, float | None] = REQUEST_TIMEOUT) -> dict[str, Any]:
        response = self._call(method, path, body, query, content_type, timeout=timeout)
        try:
            response.read()
        except urllib3.exceptions.HTTPError as error:
            raise Unavailable(0, f"cannot reach the API server: {error}") from None
        return orjson.loads(response.data or b"{}")

    # ------------------------------------------------------------------------------------------ FineTuneJobs

    def get_finetunejob(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._request("GET", f"{collection_path(API_VERSION, KIND, namespace)}/{name}")
        except NotFound:
            return None

    def patch_status(self, namespace: str, name: str, status_patch: dict[str, Any],
                     resource_version: str | None = None) -> dict[str, Any]:
        """Merge ``status_patch`` into the status; with ``resource_version``, only if the object is still at that
        version (else Conflict). Returns the FineTuneJob as stored after the patch."""
        body: dict[str, Any] = {"status": status_patch}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        return self._request("PATCH", f"{collection_path(API_VERSION, KIND, namespace)}/{name}/status",
                             body, content_type="application/merge-patch+json")

    def delete_finetunejob(self, namespace: str, name: str) -> None:
        try:
            self._request("DELETE", f"{collection_path(API_VERSION, KIND, namespace)}/{name}",
                          query={"propagationPolicy": "Background"})
        except NotFound:
            pass

    def list_finetunejobs(self, namespace: str | None) -> list[dict[str, Any]]:
        """The FineTuneJobs of ``namespace`` (None: every namespace), for `finetune get`."""
        return self._request("GET", collection_path(API_VERSION, KIND, namespace)).get("items", [])

    def crd_installed(self) -> bool:
        try:
            self._request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}")
        except NotFound:
            return False
        return True

    # ------------------------------------------------------------------------------------------ children

    def list_children(self, namespace: str, finetunejob: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The Jobs and pods of every attempt of a FineTuneJob (a consistent read: children.py's fallback)."""
        query = {"labelSelector": f"{LABEL_FINETUNEJOB}={finetunejob}"}
        jobs = self._request("GET", collection_path("batch/v1", "Job", namespace), query=query)
        pods = self._request("GET", collection_path("v1", "Pod", namespace), query=query)
        return jobs.get("items", []), pods.get("items", [])

    def list_collection(self, path: str, selector: str) -> tuple[list[dict[str, Any]], str]:
        """Every object of a collection that ``selector`` matches, read in pages (one snapshot: every page is at
        the first one's resourceVersion), and that resourceVersion, to watch from (reflector.py)."""
        items: list[dict[str, Any]] = []
        query = {"labelSelector": selector, "limit": str(LIST_PAGE)}
        while True:
            answer = self._request("GET", path, query=query)
            items += answer.get("items", [])
            meta = answer.get("metadata") or {}
            if not meta.get("continue"):
                return items, meta.get("resourceVersion") or ""
            query = {**query, "continue": meta["continue"]}

    def watch(self, path: str, selector: str, version: str, timeout_seconds: int) -> WatchStream:
        """The changes to a collection after ``version``, with bookmarks; the server ends the watch after
        ``timeout_seconds``. 410 Gone (``version`` is older than the server keeps) raises NotFound."""
        query = {"watch": "true", "labelSelector": selector, "resourceVersion": version,
                 "allowWatchBookmarks": "true", "timeoutSeconds": str(timeout_seconds)}
        return WatchStream(self._call("GET", path, query=query,
                                      timeout=(REQUEST_TIMEOUT[0], timeout_seconds + WATCH_GRACE)).response)

    def list_workloads(self, namespace: str, job_uid: str) -> list[dict[str, Any]]:
        """Kueue's Workloads for the Job with this uid (kueue.py); none where Kueue is not installed."""
        try:
            answer = self._request("GET", workloads_path(namespace),
                                   query={"labelSelector": f"{LABEL_JOB_UID}={job_uid}"})
        except NotFound:  # no Workload API: a queueName without Kueue, which keeps the Job suspended
            return []
        except KubeError as error:
            if error.status != 403:
                raise
            # A Role without the chart's rule for Workloads: the status still says the job waits for Kueue.
            log.warning("cannot read Kueue's Workloads in %s (the operator's Role lacks list on "
                        "workloads.kueue.x-k8s.io): %s", namespace, error)
            return []
        return answer.get("items", [])

    def create_if_absent(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Create ``obj``: the object as created if this call created it, None if it existed (a retried pass).

        Names are deterministic, so this is what makes a pass safe to repeat, on any view of the cluster.
        """
        meta = obj["metadata"]
        try:
            return self._request("POST", collection_path(obj["apiVersion"], obj["kind"], meta["namespace"]), obj)
        except Conflict:
            return None

    def set_job_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        self._request("PATCH", f"{collection_path('batch/v1', 'Job', namespace)}/{name}",
                      {"spec": {"suspend": suspend}}, content_type="application/merge-patch+json")

    def pod_log(self, namespace: str, pod: str, container: str, follow: bool = False) -> Iterator[bytes]:
        """A container's log, in chunks as they come; with ``follow``, until the container ends."""
        query = {"container": container, **({"follow": "true"} if follow else {})}
        # A followed log may be quiet for long (a slow step): no read timeout then.
        response = self._call("GET", f"{collection_path('v1', 'Pod', namespace)}/{pod}/log", query=query,
                              accept="*/*", timeout=(REQUEST_TIMEOUT[0], None if follow else REQUEST_TIMEOUT[1]))
        try:
            yield from response.response.stream(8192)
        except urllib3.exceptions.HTTPError as error:
            raise Unavailable(0, f"the log stream broke: {error}") from None
        finally:
            response.response.release_conn()

    # ------------------------------------------------------------------------------------------ leases

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The leader election's Lease (leader.py); None if there is none yet (create it with create_if_absent)."""
        try:
            return self._request("GET", f"{collection_path(LEASE_API, 'Lease', namespace)}/{name}")
        except NotFound:
            return None

    def replace_lease(self, lease: dict[str, Any], timeout: float) -> dict[str, Any]:
        """PUT ``lease`` as read and changed: Conflict if anyone wrote it since. ``timeout`` bounds the call."""
        meta = lease["metadata"]
        return self._request("PUT", f"{collection_path(LEASE_API, 'Lease', meta['namespace'])}/"
                                    f"{meta['name']}", lease, timeout=(min(REQUEST_TIMEOUT[0], timeout), timeout))

    # ------------------------------------------------------------------------------------------ events

    def list_events(self, namespace: str, kind: str, name: str) -> list[dict[str, Any]]:
        """The Events about one object, for `finetune describe`."""
        query = {"fieldSelector": f"involvedObject.kind={kind},involvedObject.name={name}"}
        return self._request("GET", collection_path("v1", "Event", namespace), query=query).get("items", [])

    def post_event(self, event: dict[str, Any]) -> None:
        """Best effort: a lost Event must not fail a reconcile, so failures are logged and dropped."""
        about = event["involvedObject"]
        try:
            self._request("POST", collection_path("v1", "Event", about["namespace"]), event)
        except KubeError as error:
            log.warning("could not post Event %s for %s/%s: %s", event["reason"], about["namespace"], about["name"],
                        error)


class WatchStream:
    """The events of one watch request, decoded as they arrive, until the server ends it. ``close``, from any
    thread, ends it early (the operator stops leading): a blocked read returns at once."""

    def __init__(self, response: urllib3.BaseHTTPResponse):
        self._response = response

    def __iter__(self) -> Iterator[dict[str, Any]]:
        pending = b""
        try:
            for chunk in self._response.stream(None):  # each chunk as it comes: watch answers are chunked
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield orjson.loads(line)
        except urllib3.exceptions.HTTPError as error:
            raise Unavailable(0, f"the watch broke: {error}") from None
        except OSError as error:  # the socket shut down by close()
            raise Unavailable(0, f"the watch was closed: {error}") from None
        finally:
            self._response.release_conn()  # a stream left early: urllib3 closed its connection, the pool opens anew

    def close(self) -> None:
        self._response.shutdown()
