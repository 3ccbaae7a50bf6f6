"""kill -9 during a checkpoint upload, with the real trainer process and a real S3 server: nothing half-uploaded is
taken as complete, nothing complete is lost, and the restarted trainer resumes from the bucket's newest complete
checkpoint and finishes there.

The moment is made deterministic by a TCP proxy between the trainer and SeaweedFS that forwards everything until
the upload of one chosen file of a checkpoint starts, then holds the connection (a network that stopped): the
trainer is stuck in that upload, some files of the checkpoint are in the bucket, its COMPLETE marker is not.
"""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlparse

import yaml

from reliability.trainer_process import TrainerRun


class StallingProxy:
    """Forwards TCP to ``target`` until a client sends ``pattern``; from then on holds what clients send."""

    def __init__(self, target: str, pattern: bytes):
        url = urlparse(target)
        self.target = (url.hostname, url.port)
        self.pattern = pattern
        self.stalled = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, dest: socket.socket, from_client: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                if from_client and (self.stalled.is_set() or self.pattern in data):
                    self.stalled.set()
                    continue  # swallowed: the request never completes
                dest.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, dest):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def test_kill_9_during_a_checkpoint_upload_resumes_from_the_newest_complete_one(s3_server, s3_env, s3_inputs,
                                                                                tmp_path):
    bucket = s3_server.bucket("kill")
    output = f"s3://{bucket}/run"
    proxy = StallingProxy(s3_server.endpoint, f"PUT /{bucket}/run/checkpoints/step-4/rng-rank0.pt".encode())
    config = {
        "name": "kill-upload", "model": {"source": s3_inputs["model"]}, "task": "sequence-classification",
        "dataset": {"source": s3_inputs["data"], "maxLength": 32}, "strategy": {"type": "full"},
        "training": {"epochs": 1, "batchSize": 16, "learningRate": 1e-2, "saveEvery": 2, "logEvery": 1},
        "output": {"location": output, "keepCheckpoints": 2},
        "storage": {"s3": {"endpoint": proxy.endpoint, "addressingStyle": "path"}}, "metricsPort": 0,
    }
    run = TrainerRun(tmp_path / "trainer", config, env=s3_env)
    try:
        run.start()
        run.wait_until(proxy.stalled.is_set, timeout=240, interval=0.05)
        run.kill()
        run.wait(30)
    finally:
        proxy.close()

    keys = s3_server.keys(bucket, "run/checkpoints/")
    step4 = [k for k in keys if "/step-4/" in k]
    assert "run/checkpoints/step-2/COMPLETE" in keys  # the complete one is kept
    assert step4 and "run/checkpoints/step-4/COMPLETE" not in keys  # half-uploaded: files, no marker
    assert "run/checkpoints/step-4/config.json" in step4 and "run/checkpoints/step-4/trainable.safetensors" not in step4

    config["storage"]["s3"]["endpoint"] = s3_server.endpoint
    run.config_file.write_text(yaml.safe_dump(config))
    assert run.run(timeout=300) == 0, run.tail()
    log = run.last_start_log()
    assert "restored checkpoint step 2" in log, log[-3000:]
    keys = s3_server.keys(bucket, "run/")
    complete = sorted(k for k in keys if k.startswith("run/checkpoints/") and k.endswith("/COMPLETE"))
    assert complete == ["run/checkpoints/step-4/COMPLETE", "run/checkpoints/step-6/COMPLETE"]
    assert "run/model/COMPLETE" in keys and "run/model/model.safetensors" in keys
    assert run.termination()["checkpoint"] == {"location": f"{output}/checkpoints/step-6", "step": 6}
