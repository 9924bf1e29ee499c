"""ReRec building blocks: item-attribute and user-item graphs, LightGCN, MovieLens/RecBench+ tasks, curriculum."""

from trl_mars.rec.curriculum import OnlineCurriculum
from trl_mars.rec.graphs import ItemAttributeGraph, TitleIndex, UserItemGraph
from trl_mars.rec.lightgcn import ItemEmbeddings, LightGCN, train_lightgcn
from trl_mars.rec.recbench import recbench_dataset
from trl_mars.rec.tasks import build_rerec_dataset, check_rerec_dataset, templated_reasoning

__all__ = [
    "ItemAttributeGraph",
    "ItemEmbeddings",
    "LightGCN",
    "OnlineCurriculum",
    "TitleIndex",
    "UserItemGraph",
    "build_rerec_dataset",
    "check_rerec_dataset",
    "recbench_dataset",
    "templated_reasoning",
    "train_lightgcn",
]
