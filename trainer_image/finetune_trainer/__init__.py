"""The trainer: `python -m finetune_trainer --config FILE`. Knows nothing about Kubernetes (DESIGN §4).

Kept import-light: the operator imports ``finetune_trainer.config`` without torch installed.
"""
