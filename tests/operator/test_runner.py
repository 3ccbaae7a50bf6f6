"""`finetune operator` flags and FINETUNE_* environment into Settings (runner.py, settings.py)."""

from __future__ import annotations

import os

import pytest

from finetune_operator.runner import build_parser, elector_from, settings_from


def _settings(argv, monkeypatch, **env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return settings_from(build_parser().parse_args(argv))


def test_defaults_watch_all_namespaces(monkeypatch):
    monkeypatch.delenv("FINETUNE_NAMESPACES", raising=False)
    monkeypatch.delenv("FINETUNE_WORKERS", raising=False)
    settings = _settings([], monkeypatch)
    assert settings.namespaces == ()
    assert settings.trainer_image.startswith("ghcr.io/finetune-operator/trainer:")
    assert (settings.metrics_port, settings.gpu_resource, settings.pvc_mount_root) == (8080, "nvidia.com/gpu", "/mnt/pvc")
    assert settings.workers == 16


def test_flags_override_environment(monkeypatch):
    settings = _settings(["-n", "a", "--namespace", "b", "--trainer-image", "img:flag", "--poll-interval", "2",
                          "--workers", "8"],
                         monkeypatch, FINETUNE_NAMESPACES="x,y", FINETUNE_TRAINER_IMAGE="img:env",
                         FINETUNE_GPU_RESOURCE="amd.com/gpu", FINETUNE_WORKERS="32")
    assert settings.namespaces == ("a", "b")
    assert settings.trainer_image == "img:flag"
    assert settings.poll_interval == 2.0
    assert settings.gpu_resource == "amd.com/gpu"
    assert settings.workers == 8
    assert _settings([], monkeypatch).workers == 32
    assert _settings([], monkeypatch).namespaces == ("x", "y")
    assert _settings(["--all-namespaces"], monkeypatch).namespaces == ()


def test_namespace_and_all_namespaces_exclude_each_other():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["-n", "a", "-A"])


def test_leader_election_is_off_unless_the_flag_or_the_environment_turns_it_on(monkeypatch):
    monkeypatch.delenv("FINETUNE_LEADER_ELECTION", raising=False)
    assert _settings([], monkeypatch).leader_election is False
    assert _settings(["--leader-election"], monkeypatch).leader_election is True
    on = _settings([], monkeypatch, FINETUNE_LEADER_ELECTION="true", FINETUNE_LEADER_ELECTION_NAME="rel-op",
                   FINETUNE_LEADER_ELECTION_NAMESPACE="ops", FINETUNE_LEADER_ELECTION_IDENTITY="pod-1")
    assert (on.leader_election, on.leader_election_name, on.leader_election_namespace,
            on.leader_election_identity) == (True, "rel-op", "ops", "pod-1")
    assert (on.lease_duration_seconds, on.lease_renew_deadline_seconds, on.lease_retry_period_seconds) == (10, 7, 2)


def test_the_elector_takes_the_settings_and_refuses_timings_out_of_order(monkeypatch):
    settings = _settings(["--leader-election"], monkeypatch, FINETUNE_LEADER_ELECTION_NAMESPACE="ops",
                         FINETUNE_LEADER_ELECTION_IDENTITY="pod-1")
    elector = elector_from(settings, kube=None, kubeconfig=None)
    assert (elector.namespace, elector.name, elector.identity) == ("ops", "finetune-operator", "pod-1")
    assert elector_from(_settings([], monkeypatch, FINETUNE_LEADER_ELECTION="false"), None, None) is None
    slow = _settings(["--leader-election"], monkeypatch, FINETUNE_LEASE_RENEW_DEADLINE_SECONDS="12")
    with pytest.raises(ValueError, match="FINETUNE_LEASE_DURATION_SECONDS.*renew deadline \\(12\\)"):
        elector_from(slow, None, None)


def test_a_default_identity_differs_between_processes_on_one_host(monkeypatch):
    monkeypatch.delenv("FINETUNE_LEADER_ELECTION_IDENTITY", raising=False)
    elector = elector_from(_settings(["--leader-election"], monkeypatch, FINETUNE_LEADER_ELECTION_NAMESPACE="x"),
                           None, None)
    assert elector.identity.endswith(f"_{os.getpid()}")


def test_a_standby_that_cannot_reach_the_api_stays_alive_not_ready_and_stops_on_sigterm(tmp_path):
    """The process as the chart runs it, against an API server that does not answer (nothing listens on port 1):
    it stands by, its probes say so, and SIGTERM ends it cleanly. (Leading is tests/cluster/test_failover.py.)"""
    import signal
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    import yaml
    from ports import free_ports

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dead",
        "clusters": [{"name": "dead", "cluster": {"server": "http://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "u"}}]}))
    ports = free_ports(2)
    env = {**os.environ, "FINETUNE_LEADER_ELECTION_NAMESPACE": "ops", "FINETUNE_LEASE_RETRY_PERIOD_SECONDS": "0.5"}
    proc = subprocess.Popen([sys.executable, "-m", "finetune_operator.runner", "--kubeconfig", str(kubeconfig),
                             "--leader-election", "--metrics-port", str(ports[0]), "--health-port", str(ports[1])],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def probe(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ports[1]}{path}", timeout=2) as answer:
                return answer.status, answer.read().decode().strip()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode().strip()

    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert probe("/healthz") == (200, "standing by")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
                time.sleep(0.2)
        assert probe("/readyz") == (503, "standby; the leader is not elected yet")
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/metrics", timeout=2) as answer:
            assert "finetune_operator_leader 0.0" in answer.read().decode()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = proc.stdout.read()
    assert "stands by for Lease ops/finetune-operator" in log and "cannot read or write Lease" in log, log
