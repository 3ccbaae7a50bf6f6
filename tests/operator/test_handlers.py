"""The Kopf wiring (handlers.py): passes on the configured threads, watches of our children only, and Kopf's
bookkeeping of handled specs for FineTuneJobs only."""

from __future__ import annotations


def test_kopf_runs_passes_on_the_configured_threads_and_watches_only_our_children():
    import kopf
    from kopf._cogs.structs.references import Resource

    from finetune_operator import handlers
    from finetune_operator.children import Children
    from finetune_operator.settings import Settings

    class Kube:
        def crd_installed(self):
            return True

    class Reconciler:
        settings, kube = Settings(workers=24), Kube()

    settings = kopf.OperatorSettings()
    handlers.configure(settings, kopf.Memo(reconciler=Reconciler(), children=Children()))
    assert settings.execution.max_workers == 24
    assert settings.persistence.consistency_timeout >= 30  # see handlers.configure
    selector = "app.kubernetes.io/managed-by=finetune-operator,finetune.io/job"
    for resource in (Resource("batch", "v1", "jobs"), Resource("", "v1", "pods")):
        assert list(settings.watching.label_selectors.collect(resource)) == [selector]
    assert not list(settings.watching.label_selectors.collect(Resource("finetune.io", "v1alpha1", "finetunejobs")))


def test_kopf_records_the_handled_spec_of_finetunejobs_only():
    import kopf

    from finetune_operator.handlers import DiffBaseStorage

    storage = DiffBaseStorage(prefix="finetune.io")
    pod = kopf.Body({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []}})
    assert storage.build(body=pod) is None  # no deep copy of every pod and Job event
    ftj = kopf.Body({"apiVersion": "finetune.io/v1alpha1", "kind": "FineTuneJob",
                     "metadata": {"name": "j", "labels": {"team": "a"}}, "spec": {"task": "x"}, "status": {"p": 1}})
    assert storage.build(body=ftj) == {"spec": {"task": "x"}, "metadata": {"labels": {"team": "a"}}}
