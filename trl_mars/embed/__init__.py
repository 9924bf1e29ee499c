"""Embedding models trained as generators (TRACE): encoder with routed inference, retrieval metrics and tasks.

``TraceEmbedTrainer`` lives in ``trl_mars.trainers.trace_trainer``; the loss pieces in ``trl_mars.losses.trace``.
"""

from trl_mars.embed.encoder import EncoderSettings, TraceEncoder
from trl_mars.embed.evaluation import evaluate_retrieval
from trl_mars.embed.export import export_sentence_transformers
from trl_mars.embed.metrics import retrieval_metrics
from trl_mars.embed.movielens_task import build_movielens_retrieval_task
from trl_mars.embed.prompts import EMB_TOKEN

__all__ = [
    "EMB_TOKEN",
    "EncoderSettings",
    "TraceEncoder",
    "build_movielens_retrieval_task",
    "evaluate_retrieval",
    "export_sentence_transformers",
    "retrieval_metrics",
]
