"""Self-play building blocks: domain tree, corpora, skill encoders, memory bank, grading, tree rendering."""

from trl_mars.selfplay.corpus import CorpusEnvironment, CorpusSource, Document, LocalCorpus, SearxngCorpus
from trl_mars.selfplay.encoders import (
    CodeAbstractionEncoder,
    HashingEncoder,
    SkillEncoder,
    TransformersEmbedder,
    build_skill_encoder,
    minilm_encoder,
)
from trl_mars.selfplay.grading import answers_match, extract_boxed, get_grader
from trl_mars.selfplay.memory import MemoryBank, MemoryEntry
from trl_mars.selfplay.movielens_corpus import build_movielens_documents, movielens_corpus
from trl_mars.selfplay.render import dump_tree, render_html, tree_to_json
from trl_mars.selfplay.tree import DomainTree, aggregate_proposals

__all__ = [
    "CodeAbstractionEncoder",
    "CorpusEnvironment",
    "CorpusSource",
    "Document",
    "DomainTree",
    "HashingEncoder",
    "LocalCorpus",
    "MemoryBank",
    "MemoryEntry",
    "SearxngCorpus",
    "SkillEncoder",
    "TransformersEmbedder",
    "aggregate_proposals",
    "answers_match",
    "build_movielens_documents",
    "build_skill_encoder",
    "dump_tree",
    "extract_boxed",
    "get_grader",
    "minilm_encoder",
    "movielens_corpus",
    "render_html",
    "tree_to_json",
]
