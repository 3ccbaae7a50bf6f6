"""Task adapters; importing this package registers each of them (see base.register)."""
from finetune_trainer.tasks import sequence_classification  # noqa: F401
from finetune_trainer.tasks import token_classification  # noqa: F401
from finetune_trainer.tasks import question_answering  # noqa: F401
from finetune_trainer.tasks import causal_lm  # noqa: F401
from finetune_trainer.tasks import seq2seq  # noqa: F401
