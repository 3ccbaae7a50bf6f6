"""A real S3 server for the object-storage tests: SeaweedFS (`weed server -s3`, built by tools/seaweedfs/build.sh)
on free ports, with one identity (access key and secret) and buckets made on demand, stopped after the session.

It listens on loopback by default; ``FTO_S3_HOST`` (e.g. 10.245.0.1, the plane's bridge fto0) makes it listen where
pods on the real node reach it (tests/e2e). A test that needs it skips when `weed` is not built, and fails instead
when FTO_REQUIRE_CLUSTER=1 (tests/helm_chart.py require_tool).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helm_chart import tool_bin_dir
from ports import free_ports

ACCESS_KEY = "fto-test-access"
SECRET_KEY = "fto-test-secret-key"
REGION = "us-east-1"


def weed_binary() -> Path:
    """tools/seaweedfs/build.sh's weed (FTO_SEAWEEDFS_BIN names another folder); not checked: callers require it."""
    return tool_bin_dir("seaweedfs", "FTO_SEAWEEDFS_BIN") / "weed"

@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen
    log: Path
    buckets: set[str] = field(default_factory=set)

    def env(self, **extra: str) -> dict[str, str]:
        """The standard AWS variables any AWS tool (and `finetune run`) reads to reach this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": REGION, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, **extra}

    def client(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=access_key,
                            aws_secret_access_key=secret_key,
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))

    def bucket(self, prefix: str = "b") -> str:
        """A new, empty bucket."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        self.buckets.add(name)
        return name

    def upload_dir(self, path: Path, bucket: str, prefix: str) -> str:
        """Every file under ``path`` as ``s3://bucket/prefix/...``; returns that URI."""
        client = self.client()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            client.upload_file(str(file), bucket, f"{prefix}/{file.relative_to(path).as_posix()}")
        return f"s3://{bucket}/{prefix}"

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def start(workdir: Path, host: str | None = None) -> S3Server:
    host = host or os.environ.get("FTO_S3_HOST", "127.0.0.1")
    weed = weed_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    identities = {"identities": [{"name": "fto", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                                  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
    (workdir / "s3.json").write_text(json.dumps(identities))
    # SeaweedFS also opens <port>+10000 for gRPC unless told; every port is chosen here, so none is implied.
    names = ("master", "master.port.grpc", "volume", "volume.port.grpc", "filer", "filer.port.grpc", "s3", "s3.port.grpc")
    ports = dict(zip(names, free_ports(len(names), host)))
    args = [str(weed), "server", f"-dir={workdir / 'data'}", f"-ip={host}", f"-ip.bind={host}", "-s3",
            f"-s3.config={workdir / 's3.json'}", "-master.volumeSizeLimitMB=64", "-volume.max=100",
            f"-master.port={ports['master']}", f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
            f"-s3.port={ports['s3']}", "-s3.port.iceberg=0", "-s3.port.lance=0",  # catalogs on fixed ports: off
            *(f"-{name}={port}" for name, port in ports.items() if name.endswith(".grpc"))]
    (workdir / "data").mkdir(exist_ok=True)
    log = workdir / "weed.log"
    with log.open("w") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    server = S3Server(f"http://{host}:{ports['s3']}", process, log)
    deadline = time.monotonic() + 90
    while True:  # ready when a bucket can be made (the S3 gateway waits for the filer, the filer for a volume)
        if process.poll() is not None:
            raise RuntimeError(f"weed exited {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            server.client().create_bucket(Bucket="ready")
            server.client().delete_bucket(Bucket="ready")
            return server
        except Exception:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"SeaweedFS S3 not ready in 90s:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.5)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    from helm_chart import require_tool

    require_tool(weed_binary(), "tools/seaweedfs/build.sh (make plane)")
    server = start(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()
