"""`finetune operator` flags and FINETUNE_* environment into Settings (runner.py, settings.py)."""

from __future__ import annotations

import pytest

from finetune_operator.runner import build_parser, settings_from


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
