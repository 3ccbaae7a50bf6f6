"""Bad input and faults of object storage, against a real S3 server: refused credentials and a missing bucket are
permanent at once (exit 2) and name the Secret's key or the bucket; an unreachable endpoint is retryable (exit 75);
a missing source names the field. No credential's value appears in any message."""

from __future__ import annotations

import pytest

from finetune_trainer import train
from finetune_trainer.config import EXIT_PERMANENT, EXIT_RETRYABLE
from finetune_trainer.errors import TrainerError
from ports import free_port
from s3_live import ACCESS_KEY, SECRET_KEY

SECRET = {"secretRef": {"name": "s3-credentials", "accessKeyIdKey": "access", "secretAccessKeyKey": "secret"}}


def failure(config) -> TrainerError:
    with pytest.raises(TrainerError) as caught:
        train.run(config)
    return caught.value


@pytest.mark.parametrize("variable, value, reason, named", [
    ("AWS_SECRET_ACCESS_KEY", "not-the-secret", "StorageAccessDenied", 'key "secret" of Secret "s3-credentials"'),
    ("AWS_ACCESS_KEY_ID", "nobody", "StorageAccessDenied", 'key "access" of Secret "s3-credentials"'),
], ids=["wrong-secret-key", "unknown-access-key"])
def test_refused_credentials_fail_at_once_naming_the_secret_key(s3_env, s3_job, monkeypatch, tmp_path, variable,
                                                                value, reason, named):
    monkeypatch.setenv(variable, value)
    error = failure(s3_job(str(tmp_path / "out"), storage={"s3": SECRET}))
    assert (error.exit_code, error.reason) == (EXIT_PERMANENT, reason)
    assert named in str(error) and error.field == "storage.s3.secretRef"
    assert value not in str(error) and SECRET_KEY not in str(error) and ACCESS_KEY not in str(error)


def test_refused_credentials_without_a_secret_name_the_variable(s3_env, s3_job, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    error = failure(s3_job(str(tmp_path / "out")))
    assert error.exit_code == EXIT_PERMANENT and "the environment variable AWS_SECRET_ACCESS_KEY" in str(error)


def test_a_missing_bucket_fails_at_once_naming_it(s3_env, s3_job, tmp_path):
    error = failure(s3_job("s3://no-such-bucket-fto/run"))
    assert (error.exit_code, error.reason, error.field) == (EXIT_PERMANENT, "BucketNotFound", "output.location")
    assert 'bucket "no-such-bucket-fto" does not exist' in str(error)
    error = failure(s3_job(str(tmp_path / "out"), model="s3://no-such-bucket-fto/models/bert"))
    assert (error.reason, error.field) == ("BucketNotFound", "model.source")


def test_a_missing_source_names_the_field(s3_env, s3_job, s3_inputs, tmp_path):
    error = failure(s3_job(str(tmp_path / "out"), model=f"s3://{s3_inputs['bucket']}/models/none"))
    assert (error.exit_code, error.reason, error.field) == (EXIT_PERMANENT, "ModelNotFound", "model.source")
    assert "no objects under it" in str(error)


def test_an_unreachable_endpoint_is_retryable(s3_env, s3_job, monkeypatch, tmp_path):
    endpoint = f"http://127.0.0.1:{free_port('127.0.0.1')}"  # nothing listens there
    error = failure(s3_job(str(tmp_path / "out"), storage={"s3": {"endpoint": endpoint, "addressingStyle": "path"}}))
    assert (error.exit_code, error.reason) == (EXIT_RETRYABLE, "StorageUnavailable")
    assert endpoint in str(error) and "model.source" in str(error)


def test_the_job_storage_settings_win_over_the_environment(s3_server, s3_env, s3_job, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port('127.0.0.1')}")
    summary = train.run(s3_job(str(tmp_path / "out"), epochs=1, maxSteps=1,
                               storage={"s3": {"endpoint": s3_server.endpoint, "region": "us-east-1",
                                               "addressingStyle": "path"}}))
    assert summary["phase"] == "Succeeded"
