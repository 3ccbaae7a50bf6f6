"""Notifications: every transition that posts a Kubernetes Event is also told to HTTP sinks.

- notice.py: the ``Notice`` of one transition (job, phase, reason, headline metrics, output URIs, uid) and its
  deterministic id, the idempotency key of every delivery of it
- encoders.py: a Notice as a CloudEvent (structured mode) or as a Slack-compatible webhook message
- signing.py: the HMAC-SHA256 signature header over the body, and its check (for receivers and tests)
- sinks.py: which sinks a FineTuneJob's notices go to: the admin's (chart values) and the job's (spec.notify)
- delivery.py: the ``Notifier``: a bounded queue and a worker thread per sink, retries with backoff, a give-up
  callback; reconciliation only appends to a queue, so a slow or dead sink never holds a pass up
"""
