"""When a run stops before its last step: on a signal, or when early stopping says the eval metric stopped improving.

A signal (SIGTERM from the kubelet, SIGINT from a terminal) only sets a flag; the loop checks it at the next step
boundary, saves a checkpoint and exits with the retryable code. Early stopping compares each evaluation's
``training.earlyStopping.metric`` with the best so far, in the direction the task declares for that metric
(``TaskAdapter.higher_is_better``); its count lives in the train state, so a resumed run keeps counting.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
from typing import Any, Protocol

from finetune_trainer.config import EarlyStopping
from finetune_trainer.errors import ConfigError, Interrupted

log = logging.getLogger("finetune_trainer")


class StopSignal:
    """SIGTERM/SIGINT set a flag the loop checks at each step boundary (it then saves and exits retryably);
    a second signal stops at once, without a checkpoint."""

    def __init__(self):
        self.requested = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, _frame) -> None:
        if self.requested:
            raise Interrupted(f"{signal.Signals(signum).name} again: stopped without saving a checkpoint")
        self.requested = True
        log.warning("%s received: saving a checkpoint at the end of this step", signal.Signals(signum).name)


class EarlyStoppingState(Protocol):
    step: int
    best_metric: float | None
    evals_without_improvement: int


def early_stop(rule: EarlyStopping | None, metrics: dict[str, float], higher_is_better: dict[str, bool],
               state: EarlyStoppingState, task: str) -> bool:
    """After an evaluation: whether ``rule`` says to stop now. Updates the best value and the count in ``state``."""
    if rule is None:
        return False
    if rule.metric not in metrics:
        raise ConfigError(f"training.earlyStopping.metric {rule.metric!r} is not reported by {task}; "
                          f"it reports {sorted(metrics)}", field="training.earlyStopping.metric")
    value, best = metrics[rule.metric], state.best_metric
    gain = math.inf if best is None else (value - best if higher_is_better[rule.metric] else best - value)
    if gain > rule.min_delta:
        state.best_metric, state.evals_without_improvement = value, 0
        return False
    state.evals_without_improvement += 1
    if state.evals_without_improvement < rule.patience:
        return False
    log.info("early stopping at step %d: %s has not improved on %.4f for %d evaluations", state.step, rule.metric,
             best, rule.patience)
    return True
