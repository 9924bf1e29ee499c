"""LightGCN (He et al., SIGIR 2020) on the user-item graph; its item embeddings give ReRec's PAS term.

Propagation: E^(l+1) = D^{-1/2} A D^{-1/2} E^(l); final embedding E = mean_{l=0..L} E^(l).
Training: BPR, loss = -mean log sigmoid(e_u.e_i - e_u.e_j) + weight_decay * (|e0_u|^2 + |e0_i|^2 + |e0_j|^2) / (2B),
with j a uniformly sampled item.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from trl_mars.rec.graphs import TitleIndex, UserItemGraph


class LightGCN(nn.Module):
    """Free user/item embeddings E^(0) smoothed over the normalised interaction graph for ``num_layers`` hops."""

    def __init__(self, num_users: int, num_items: int, dim: int = 64, num_layers: int = 3):
        super().__init__()
        self.num_users, self.num_layers = num_users, num_layers
        self.embedding = nn.Embedding(num_users + num_items, dim)
        nn.init.normal_(self.embedding.weight, std=0.1)

    def forward(self, adjacency: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(user embeddings, item embeddings) after layer-mean propagation."""
        layer = self.embedding.weight
        total = layer
        for _ in range(self.num_layers):
            layer = torch.sparse.mm(adjacency, layer)
            total = total + layer
        final = total / (self.num_layers + 1)
        return final[: self.num_users], final[self.num_users :]


@dataclass
class ItemEmbeddings:
    """Item embedding vectors keyed by catalogue title (row i of ``vectors`` is ``titles[i]``)."""

    titles: list[str]
    vectors: torch.Tensor

    def __post_init__(self):
        if not self.titles or self.vectors.shape[0] != len(self.titles):
            raise ValueError(
                f"item_embeddings needs one vector per title, got {self.vectors.shape[0]} vectors and "
                f"{len(self.titles)} titles"
            )
        self.index = TitleIndex(self.titles)

    def lookup(self, title: str) -> torch.Tensor | None:
        """Embedding of ``title``, or None if the title is unknown."""
        i = self.index.find(title)
        return None if i is None else self.vectors[i]

    def save(self, path: str | os.PathLike) -> None:
        torch.save({"titles": self.titles, "vectors": self.vectors}, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ItemEmbeddings:
        data = torch.load(path, weights_only=True)
        return cls(list(data["titles"]), data["vectors"])


def train_lightgcn(
    graph: UserItemGraph,
    dim: int = 64,
    num_layers: int = 3,
    epochs: int = 20,
    batch_size: int = 8192,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> tuple[ItemEmbeddings, list[float]]:
    """Train LightGCN with BPR on ``graph``; returns the item embeddings and the mean loss of each epoch."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = LightGCN(graph.num_users, graph.num_items, dim, num_layers)
    adjacency = graph.normalized_adjacency()
    edges = torch.tensor(graph.edges)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for _ in range(epochs):
        order = torch.randperm(len(edges), generator=generator)
        losses = []
        for start in range(0, len(edges), batch_size):
            users, pos = edges[order[start : start + batch_size]].T
            neg = torch.randint(graph.num_items, (len(users),), generator=generator)
            user_e, item_e = model(adjacency)
            u, i, j = user_e[users], item_e[pos], item_e[neg]
            bpr = -nn.functional.logsigmoid((u * i).sum(-1) - (u * j).sum(-1)).mean()
            ego = model.embedding.weight
            reg = (
                ego[users].pow(2).sum()
                + ego[pos + graph.num_users].pow(2).sum()
                + ego[neg + graph.num_users].pow(2).sum()
            )
            loss = bpr + weight_decay * reg / (2 * len(users))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        history.append(sum(losses) / len(losses))
    with torch.no_grad():
        _, item_e = model(adjacency)
    return ItemEmbeddings(graph.titles, item_e.detach().clone()), history
