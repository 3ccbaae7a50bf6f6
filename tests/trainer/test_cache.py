"""The download cache of s3:// sources against a real S3 server: a second run (a retry, another job) fetches 0
bytes of what the cache holds, a changed object is fetched again, concurrent writers leave one complete entry."""

from __future__ import annotations

import threading

from finetune_trainer import cache
from finetune_trainer.errors import ModelLoadError
from finetune_trainer.objectstore import Store


def test_a_second_fetch_downloads_nothing_and_a_changed_source_is_fetched_again(s3_server, s3_env, s3_inputs):
    store = Store(None)
    first = cache.fetch(store, s3_inputs["model"], "model.source", ModelLoadError)
    fetched = store.downloaded
    assert fetched > 0 and (first / "config.json").is_file()

    retry = Store(None)
    assert cache.fetch(retry, s3_inputs["model"], "model.source", ModelLoadError) == first
    assert retry.downloaded == 0

    bucket = s3_server.bucket("src")
    uri = s3_server.upload_dir(first, bucket, "model")
    copy = Store(None)
    before = cache.fetch(copy, uri, "model.source", ModelLoadError)
    assert copy.downloaded == fetched  # the same files under another name: another source, fetched once
    s3_server.client().put_object(Bucket=bucket, Key="model/README.md", Body=b"changed")
    changed = Store(None)
    after = cache.fetch(changed, uri, "model.source", ModelLoadError)
    assert after != before and (after / "README.md").read_bytes() == b"changed"
    assert changed.downloaded == fetched + len(b"changed")


def test_concurrent_fetches_leave_one_complete_entry(s3_server, s3_env, s3_inputs):
    stores = [Store(None) for _ in range(3)]
    results: list = []
    threads = [threading.Thread(target=lambda s=s: results.append(
        cache.fetch(s, s3_inputs["data"], "dataset.source", ModelLoadError))) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and sorted(p.name for p in results[0].iterdir()) == ["dev.csv", "train.csv"]
    assert not [p for p in cache.root().joinpath("s3").iterdir() if p.name.startswith(".tmp-")]


def test_a_single_object_is_a_directory_holding_it(s3_server, s3_env, s3_inputs):
    path = cache.fetch(Store(None), s3_inputs["data"] + "/train.csv", "dataset.source", ModelLoadError)
    assert [p.name for p in path.iterdir()] == ["train.csv"]


def test_finetune_plan_reads_an_s3_model_through_the_cache(s3_server, s3_env, s3_job, s3_inputs):
    from finetune_trainer.plan import plan

    resolved = plan(s3_job("s3://unused-output/run"))
    assert resolved["model"]["source"] == s3_inputs["model"] and resolved["model"]["class"] == \
        "BertForSequenceClassification"


def test_a_download_killed_long_ago_is_cleared_and_a_recent_one_is_left(s3_server, s3_env, s3_inputs):
    import os
    import time

    entries = cache.root() / "s3"
    old, recent = entries / ".tmp-abc-killed", entries / ".tmp-def-running"
    for path in (old, recent):
        (path / "part").mkdir(parents=True)
    day_ago = time.time() - cache.ABANDONED_SECONDS - 60
    os.utime(old, (day_ago, day_ago))
    cache.fetch(Store(None), s3_inputs["data"], "dataset.source", ModelLoadError)
    assert not old.exists() and recent.exists()
