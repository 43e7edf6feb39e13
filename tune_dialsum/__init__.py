"""tune_dialsum: hyperparameter search for dialogue summarization models."""

from tune_dialsum.data import DialogueDataLoader
from tune_dialsum.metrics import compute_rouge
from tune_dialsum.train import DialogueSummarizationTrainer, train_model_from_dataframes

__version__ = "0.1.0"
__all__ = ["DialogueDataLoader", "DialogueSummarizationTrainer", "compute_rouge", "train_model_from_dataframes"]
