"""Exact nearest-neighbour search over a growing set of key vectors, with a value per key: the
datastore of kNN-LM and the edit cache of SERA.

Keys live in one growing tensor (`QueryStore`), the source of truth; search is an exact L2 scan
in chunks (torch), or faiss's flat index where faiss is installed (`backend=faiss`), kept in step
with the tensor by adding only the rows it has not seen yet.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from editors.configs.base import BACKENDS  # noqa: F401  (its config, torch-free)
from editors.patch_memory import QueryStore


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


class Datastore:
    def __init__(self, width: int, backend: str = "auto", chunk: int = 16_384):
        if backend not in BACKENDS:
            raise ValueError(f"datastore backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if backend == "faiss" and not faiss_available():
            raise ValueError("backend=faiss needs the faiss package: pip install faiss-cpu")
        self.backend = "faiss" if backend == "faiss" or (backend == "auto" and faiss_available()) else "torch"
        self.keys = QueryStore(width)
        self.values: list[Any] = []
        self.chunk = chunk
        self._index = None
        self._indexed = 0

    def __len__(self) -> int:
        return len(self.values)

    def add(self, keys: Tensor, values: list[Any]) -> None:
        if len(keys) != len(values):
            raise ValueError(f"{len(keys)} keys but {len(values)} values")
        self.keys.append(keys.detach().float())
        self.values += list(values)

    def truncate(self, length: int) -> None:
        self.keys.truncate(length)
        self.values = self.values[:length]
        if self._indexed > length:  # faiss cannot drop rows cheaply: rebuild on the next search
            self._index, self._indexed = None, 0

    @torch.no_grad()
    def search(self, queries: Tensor) -> tuple[Tensor, Tensor]:
        """(distance, index) of each query's nearest key; distance inf where the store is empty."""
        n = len(queries)
        if not len(self):
            return torch.full((n,), float("inf")), torch.full((n,), -1, dtype=torch.long)
        queries = queries.float().to(self.keys.rows.device)
        if self.backend == "faiss":
            return self._search_faiss(queries)
        best = torch.full((n,), float("inf"), device=queries.device)
        where = torch.zeros(n, dtype=torch.long, device=queries.device)
        q2 = (queries**2).sum(1, keepdim=True)
        keys = self.keys.matrix
        for lo in range(0, len(keys), self.chunk):
            part = keys[lo : lo + self.chunk]
            d2 = (q2 - 2 * queries @ part.T + (part**2).sum(1)).clamp_(min=0)
            value, index = d2.min(1)
            better = value < best
            best = torch.where(better, value, best)
            where = torch.where(better, index + lo, where)
        return self._exact(queries, where)

    def _exact(self, queries: Tensor, where: Tensor) -> tuple[Tensor, Tensor]:
        # |q|^2 - 2qk + |k|^2 finds the neighbour fast but loses ~1e-4 to rounding after the
        # square root; the distance to the chosen key is recomputed directly (0 for the same text).
        where = where.to(queries.device)
        return (queries - self.keys.matrix[where]).norm(dim=1).cpu(), where.cpu()

    def _search_faiss(self, queries: Tensor) -> tuple[Tensor, Tensor]:
        import faiss

        if self._index is None:
            self._index = faiss.IndexFlatL2(self.keys.width)
        if self._indexed < len(self):
            self._index.add(self.keys.matrix[self._indexed :].cpu().numpy())
            self._indexed = len(self)
        _, index = self._index.search(queries.cpu().numpy(), 1)
        return self._exact(queries, torch.from_numpy(index[:, 0]).long())

    def state(self, start: int = 0) -> dict[str, Any]:
        return {"keys": self.keys.matrix[start:].cpu().clone(), "values": self.values[start:]}
