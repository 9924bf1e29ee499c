"""Worker for the torchrun test: each rank holds part of one batch (3 rows on rank 0, 2 on rank 1)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from trl_mars.losses.trace import gathered_info_nce, info_nce

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
queries, candidates, negatives = torch.randn(5, 4), torch.randn(5, 4), torch.randn(4, 4)

# single-process reference on the whole batch
full = [t.clone().requires_grad_() for t in (queries, candidates, negatives)]
reference = info_nce(*full[:2], 0.1, full[2])
reference.backward()

rows = slice(0, 3) if rank == 0 else slice(3, 5)
neg_rows = slice(0, 2) if rank == 0 else slice(2, 4)
local = [queries[rows].clone(), candidates[rows].clone(), negatives[neg_rows].clone()]
local = [t.requires_grad_() for t in local]
loss = gathered_info_nce(local[0], local[1], 0.1, local[2])
loss.backward()

# DDP averages parameter gradients over ranks, so the local gradient / world must be the full-batch gradient rows
errors = [
    (local[0].grad / world - full[0].grad[rows]).abs().max(),
    (local[1].grad / world - full[1].grad[rows]).abs().max(),
    (local[2].grad / world - full[2].grad[neg_rows]).abs().max(),
]
report = {
    "world_size": world,
    "loss": loss.item(),
    "single_process_loss": reference.item(),
    "max_grad_error": max(e.item() for e in errors),
}
Path(os.environ["TRACE_OUT"], f"rank{rank}.json").write_text(json.dumps(report))
dist.destroy_process_group()
