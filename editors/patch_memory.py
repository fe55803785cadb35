"""T-Patcher's memory of FFN queries: grown in place as the stream goes, and read through its
top-k entries only.

The memory loss S(M k + b - beta; k) has gradient only at its top-k entries, so each step finds
them without gradient (one scan of M) and recomputes just those k entries with gradient: the same
values and gradients as the full expression, without a backward pass through all of M.

On CPU the scan is bound by reading M (123 MB for 40,000 x 768 in fp32, ~7 ms on 2 cores), every
step. With `quantized=True` the memory also keeps an int8 copy (one scale per row) and the scan
reads that (~1 ms), then rescores in fp32 only the rows the int8 scores cannot rule out. The int8
copy holds M_i - c, c the mean of the first rows appended (c.k is added back in fp32): queries
share a large common part, and the codes then spend their 8 bits on what differs (the bound below
shrank 7x on BERT-sized queries). Each score a has a proven error bound e (below), so with tau the
k-th largest lower bound a - e, an entry whose upper bound a + e is below tau has k entries
strictly above it and is not in the top-k: the rescored rows hold every true top-k entry, and the
result is the fp32 scan's top-k.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch import Tensor

QUANTIZED_SCAN = hasattr(torch.ops.aten, "_weight_int8pack_mm")  # int8 weights x bf16 inputs, CPU kernel
PAD = 64  # the kernel wants the reduced dimension in whole vector lanes: rows are zero-padded to it


def smooth_top(values: Tensor, k: int) -> Tensor:
    """S(v; k) = mean(topk(exp(v), k)); topk before exp (same elements, exp is monotone)."""
    flat = values.reshape(-1)
    return flat.topk(min(k, flat.numel())).values.exp().mean()


class QueryMemory:
    def __init__(self, width: int, quantized: bool = False):
        self.width = width
        self.quantized = quantized and QUANTIZED_SCAN
        self.padded = -(-width // PAD) * PAD
        self.rows = torch.zeros(0, width)
        self.length = 0
        self.scans = {"full": 0, "bounded": 0, "rescored_rows": 0}  # what the scans cost, for reports
        if self.quantized:
            self.codes = torch.zeros(0, self.padded, dtype=torch.int8)  # round(M_i / s_i)
            self.scales = torch.zeros(0, dtype=torch.bfloat16)  # s_i, as the kernel reads it
            self.residual = torch.zeros(0)  # |M_i - s_i codes_i|, exact
            self.code_norms = torch.zeros(0)  # |s_i codes_i|
            self.centre = None  # c, fixed once set

    def __len__(self) -> int:
        return self.length

    @property
    def matrix(self) -> Tensor:
        return self.rows[: self.length]

    def _buffers(self) -> list[str]:
        return ["rows", "codes", "scales", "residual", "code_norms"] if self.quantized else ["rows"]

    def to(self, device) -> QueryMemory:
        if self.quantized and torch.device(device).type != "cpu":
            self.quantized = False  # the int8 kernel is CPU's; elsewhere the fp32 scan is fast anyway
        if self.quantized and self.centre is not None:
            self.centre = self.centre.to(device)
        for name in self._buffers():
            setattr(self, name, getattr(self, name).to(device))
        return self

    def append(self, rows: Tensor) -> None:
        need = self.length + len(rows)
        if need > len(self.rows):  # grow geometrically: never re-concatenate per step
            size = max(need, 2 * len(self.rows))
            for name in self._buffers():
                old = getattr(self, name)
                grown = torch.zeros(size, *old.shape[1:], dtype=old.dtype, device=rows.device)
                grown[: self.length] = old[: self.length]
                setattr(self, name, grown)
        new = rows.to(self.rows.dtype)
        self.rows[self.length : need] = new
        if self.quantized and len(new):
            self._quantize(new, slice(self.length, need))
        self.length = need

    def _quantize(self, rows: Tensor, where: slice) -> None:
        if self.centre is None:
            self.centre = rows.mean(0)
        rows = rows - self.centre
        scale = (rows.abs().amax(1) / 127).clamp_min(1e-30).to(torch.bfloat16)
        codes = (rows / scale.float()[:, None]).round().clamp(-127, 127)
        decoded = codes * scale.float()[:, None]
        self.codes[where] = F.pad(codes, (0, self.padded - self.width)).to(torch.int8)
        self.scales[where] = scale
        self.residual[where] = (rows - decoded).norm(dim=1)
        self.code_norms[where] = decoded.norm(dim=1)

    def truncate(self, length: int) -> None:
        self.length = min(length, self.length)

    def entries(self, keys: Tensor, bias: Tensor, flat: Tensor) -> Tensor:
        """Entries (row, patch) of M K + b at flat indices, with gradient through K and b."""
        n = keys.shape[1]
        rows, cols = flat // n, flat % n
        # (M[rows] K) then pick each row's patch: a small matmul whose backward is a matmul, where
        # gathering K's columns per entry would scatter-add k gradients row by row.
        picked = (self.rows.index_select(0, rows).to(keys.dtype) @ keys).gather(1, cols[:, None]).squeeze(1)
        return picked + bias[cols]

    @torch.no_grad()
    def top_entries(self, keys: Tensor, bias: Tensor, shifts: list[Tensor], k: int) -> list[Tensor]:
        """For each shift (a value per patch): flat indices of the top-k entries of
        M K + b + shift. One scan of M serves every shift; with one patch every shift ranks the
        entries alike, so its top-k is found once (the same tensor is returned for each)."""
        n, wanted = keys.shape[1], len(shifts)
        kk = min(k, self.length * n)
        if n == 1:
            shifts = shifts[:1]
        found = None
        if self.quantized and self.length * n > 4 * kk:
            found = self._bounded_top(keys, bias, shifts, kk)
        if found is None:
            self.scans["full"] += 1
            full = self.matrix @ keys.to(self.rows.dtype) + bias
            found = [(full + shift).flatten().topk(kk).indices for shift in shifts]
        return found * wanted if n == 1 else found

    @torch.no_grad()
    def keep_faster_scan(self, keys: Tensor, k: int, repeats: int = 5) -> dict[str, float]:
        """Times the int8-bounded scan and the plain fp32 scan of this memory for `keys` (median ms
        of `repeats`) and keeps the int8 copy only where its scan is faster: both find the same
        top-k, so this decides speed alone (the int8 scan wins on large memories, where reading M
        dominates, and can lose on small ones or wide rows, measured in benchmark.perf)."""
        if not self.quantized:
            return {}
        bias, shifts, timed = torch.zeros(keys.shape[1], device=keys.device), [0.0], {}
        for name, quantized in (("int8", True), ("fp32", False)):
            self.quantized, seconds = quantized, []
            for _ in range(repeats):
                start = time.perf_counter()
                self.top_entries(keys, bias, shifts, k)
                seconds.append(time.perf_counter() - start)
            timed[name] = 1000 * statistics.median(seconds)
        self.quantized = True
        if timed["fp32"] <= timed["int8"]:
            self.quantized = False
            for name in ("codes", "scales", "residual", "code_norms"):
                delattr(self, name)
        self.scans = {key: 0 for key in self.scans}  # the timing's scans are not the run's
        return timed

    def _bounded_top(self, keys: Tensor, bias: Tensor, shifts: list[Tensor], k: int) -> list[Tensor] | None:
        """The top-k entries through the int8 copy (module docstring), or None where the bound
        leaves more than half the rows to rescore (then a plain fp32 scan is cheaper)."""
        keys = keys.to(self.rows.dtype)
        short = F.pad(keys.T, (0, self.padded - self.width)).to(torch.bfloat16).contiguous()  # [n, padded]
        raw = torch.ops.aten._weight_int8pack_mm(short, self.codes[: self.length], self.scales[: self.length])
        raw = raw.float().T  # [rows, n]
        # with X_i = M_i - c and codes z_i:
        # |X_i.k - a_i| <= |X_i - s_i z_i| |k|  (int8 rounding of the row, Cauchy-Schwarz)
        #               + |s_i z_i| (|k - bf16(k)| + 1e-4 |k|)  (bf16 input; fp32 accumulation)
        #               + 2^-8 |a_i|  (bf16 output); measured below half of this, doubled for margin
        norm = keys.norm(dim=0)
        input_error = (keys - short[:, : self.width].float().T).norm(dim=0) + 1e-4 * norm
        bound = 2 * (self.residual[: self.length, None] * norm + self.code_norms[: self.length, None] * input_error
                     + raw.abs() * 2**-8 + 1e-6 * self.centre.norm() * norm)
        approx = raw + self.centre @ keys + bias
        needed = torch.zeros(self.length, dtype=torch.bool, device=keys.device)
        for shift in shifts:
            tau = (approx - bound + shift).flatten().topk(k).values[-1]
            needed |= ((approx + bound + shift) >= tau).any(1)
        rows = needed.nonzero().squeeze(1)
        if 2 * len(rows) > self.length:
            return None
        self.scans["bounded"] += 1
        self.scans["rescored_rows"] += len(rows)
        n = keys.shape[1]
        exact = self.rows.index_select(0, rows) @ keys + bias  # index_select: 3x faster than rows[...]
        found = []
        for shift in shifts:
            local = (exact + shift).flatten().topk(k).indices
            found.append(rows[local // n] * n + local % n)
        return found
