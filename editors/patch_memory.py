"""T-Patcher's memory of FFN queries: grown in place as the stream goes, and read through its
top-k entries only.

The memory loss S(M k + b - beta; k) has gradient only at its top-k entries, so each step finds
them without gradient (one scan of M) and recomputes just those k entries with gradient: the same
values and gradients as the full expression, without a backward pass through all of M.

On CPU the scan is bound by reading M (123 MB for 40,000 x 768 in fp32) every step; read through
a transposed copy (`transposed=True`) it runs at about twice the speed. With `quantized=True` the
memory also keeps an int8 copy (one scale per row) and the scan reads that (a quarter of the
bytes, but torch's int8 kernel is not bandwidth-bound: about as fast as the transposed fp32 scan
for one key, slower for several), then rescores in fp32 only the rows the int8 scores cannot rule
out; which of the two is faster is timed in the run's own edits (`start_trial`). The int8
copy holds M_i - c, c the mean of the first rows appended (c.k is added back in fp32): queries
share a large common part, and the codes then spend their 8 bits on what differs (the bound below
shrank 7x on BERT-sized queries). Each score a has a proven error bound e (below), so with tau the
k-th largest lower bound a - e, an entry whose upper bound a + e is below tau has k entries
strictly above it and is not in the top-k: the rescored rows hold every true top-k entry, and the
result is the fp32 scan's top-k, up to entries tied within rounding: the rescored products (a
product over the kept rows) round differently from the full scan's. Traced over 303 bounded
scans of 3 BERT-sized edits of 100 steps, 5 top-k sets differed from the full scan's, each only in
entries within 1.43e-6 of the one they replaced, and 267 listed the same entries in another order
(the loss then sums them in that order); Adam's 100 steps then took the keys 1.8e-4 apart,
with the same steps (the fp32 scan's keys end 4.5e-8 from the naive path's).

With `reuse=True` most steps read no row of M at all. Between steps the keys move little, and
each score moves at most as far as Cauchy-Schwarz allows: with K_0 the keys of the previous step,
D = K - K_0 and c the centre above, M_i.K = M_i.K_0 + c.D + (M_i - c).D, where the last term is
within |M_i - c| |D_j| (the rows' spread around their centre, much smaller than their norm:
4.1 against 27.7 on BERT-sized queries). Every entry keeps an interval that holds its exact
value: after a full scan its fp32 product within rounding (the int8 scan's bound where that
scan ran); each step moves it by c.D and widens it by that bound. With tau a lower bound of the
k-th largest true entry (the least lower end among the previous step's top-k entries: k distinct
entries at least that large), only rows whose upper end reaches tau can hold a top-k entry; only
they are rescored in fp32, and their intervals shrink back to rounding (the rows near the top-k,
where tightness counts; the others keep widening). Where more than a quarter of the rows remain, a
full scan runs instead. The same top-k as the full scan, up to entries tied within rounding, as
for the int8 scan (traced over 3 edits of 100 steps at 40,000 rows: every top-k set the same as a
full fp32 scan's but for exact ties at the k-th value: none of 303 on BERT-sized queries,
34 of 303 on SmolLM2-sized ones, whose memory repeats queries).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

QUANTIZED_SCAN = hasattr(torch.ops.aten, "_weight_int8pack_mm")  # int8 weights x bf16 inputs, CPU kernel
PAD = 64  # the kernel wants the reduced dimension in whole vector lanes: rows are zero-padded to it


def smooth_top(values: Tensor, k: int) -> Tensor:
    """S(v; k) = mean(topk(exp(v), k)); topk before exp (same elements, exp is monotone)."""
    flat = values.reshape(-1)
    return flat.topk(min(k, flat.numel())).values.exp().mean()


@dataclass
class _Scan:
    """What `reuse` keeps of the last step: its keys, M K (bias left out) within `error` of the
    exact products, and the top-k entries it found (per shift)."""

    keys: Tensor
    values: Tensor
    error: Tensor
    found: list[Tensor] | None = None
    fresh: bool = True  # from a scan of every row (False: from a reused step's intervals)


def times(rows: Tensor, keys: Tensor) -> Tensor:
    """rows @ keys [r, n], computed as F.linear(rows, contiguous keys^T): MKL's product of a tall
    matrix and a few columns runs several times faster that way (40,000 x 576 rows, 2 threads:
    5 keys 4.4 ms against 15.5 ms as rows @ keys and 13.3 ms as keys^T rows^T; 3,800 rows 0.4
    against 2.0 ms; 2 keys 2.9 against 13.6 ms; one key alike either way), except that for one key
    reading a transposed copy of the rows is faster still (`products`: 4.0 against 8.7 ms). A rule
    by shape, not a timed choice, so that a run's rounding does not depend on the machine's load."""
    return F.linear(rows, keys.T.contiguous())


class QueryMemory:
    def __init__(self, width: int, quantized: bool = False, transposed: bool = False, reuse: bool = False):
        self.width = width
        self.quantized = quantized and QUANTIZED_SCAN
        self.reuse = reuse  # bound scores from the previous step's (module docstring)
        # fp32 rounding of a width-long dot product, relative to |x| |y| (gamma_width, doubled)
        self.rounding = 2 * width * 2.0**-24
        self.centre: Tensor | None = None  # c, the mean of the first rows appended, fixed once set
        self.spread = torch.zeros(0)  # |M_i - c| (reuse)
        self.norms = torch.zeros(0)  # |M_i| (reuse: the rounding margins)
        self._reference: _Scan | None = None  # the last step's intervals (reuse)
        # reuse attempts to skip, and the next such pause: where even one step's move from a fresh
        # scan leaves too many rows, the keys move too fast for reuse, and each attempt only costs
        self._skip = self._pause = 0
        # the rows this step's bounded scan rescored (sorted indices) and their copy: `entries`
        # then gathers from this small block, still in cache, instead of from all of M
        self._gathered: tuple[Tensor, Tensor] | None = None
        self.padded = -(-width // PAD) * PAD
        self.rows = torch.zeros(0, width)
        # transposed=True: the same rows also transposed, [width, capacity], for the fp32 scan of one
        # key: on CPU k^T M^T reads M at ~2x the speed of M k (MKL's skinny products, 40,000 x 768,
        # 1 and 2 threads; several keys go through `times`, faster still), for twice the memory;
        # the row-major copy serves the gathers of a few rows (a gather of 1,000 columns took
        # 125 ms against 0.1 ms for the rows)
        self.transposed = transposed
        self.columns = torch.zeros(width, 0)
        self.length = 0
        # what the scans cost, for reports: full fp32 scans, int8-bounded ones and the rows they
        # rescored, reused ones (no scan) and the rows they rescored
        self.scans = {"full": 0, "bounded": 0, "rescored_rows": 0, "reused": 0, "reused_rows": 0, "paused": 0}
        self.trial: dict[str, list[float]] | None = None  # memory_scan=auto's timings, see start_trial
        self.trial_scans = 0
        self.scan_ms: dict[str, float] = {}  # its result: median ms of each scan
        if self.quantized:
            self.codes = torch.zeros(0, self.padded, dtype=torch.int8)  # round(M_i / s_i)
            self.scales = torch.zeros(0, dtype=torch.bfloat16)  # s_i, as the kernel reads it
            self.residual = torch.zeros(0)  # |M_i - s_i codes_i|, exact
            self.code_norms = torch.zeros(0)  # |s_i codes_i|

    def __len__(self) -> int:
        return self.length

    @property
    def matrix(self) -> Tensor:
        return self.rows[: self.length]

    def _buffers(self) -> list[str]:
        return ["rows", *(["codes", "scales", "residual", "code_norms"] if self.quantized else []),
                *(["spread", "norms"] if self.reuse else [])]

    def to(self, device) -> QueryMemory:
        if self.quantized and torch.device(device).type != "cpu":
            self.quantized = False  # the int8 kernel is CPU's; elsewhere the fp32 scan is fast anyway
        if self.centre is not None:
            self.centre = self.centre.to(device)
        self._reference = self._gathered = None
        for name in [*self._buffers(), "columns"]:
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
            if self.transposed:
                columns = torch.zeros(self.width, size, dtype=self.columns.dtype, device=rows.device)
                columns[:, : self.length] = self.columns[:, : self.length]
                self.columns = columns
        new = rows.to(self.rows.dtype)
        self.rows[self.length : need] = new
        if self.transposed:
            self.columns[:, self.length : need] = new.T
        if len(new) and (self.quantized or self.reuse):
            if self.centre is None:
                self.centre = new.mean(0)
            if self.quantized:
                self._quantize(new, slice(self.length, need))
            if self.reuse:
                self.spread[self.length : need] = (new - self.centre).norm(dim=1)
                self.norms[self.length : need] = new.norm(dim=1)
        if len(new):
            self._reference = self._gathered = None
        self.length = need

    def _quantize(self, rows: Tensor, where: slice) -> None:
        rows = rows - self.centre
        scale = (rows.abs().amax(1) / 127).clamp_min(1e-30).to(torch.bfloat16)
        codes = (rows / scale.float()[:, None]).round().clamp(-127, 127)
        decoded = codes * scale.float()[:, None]
        self.codes[where] = F.pad(codes, (0, self.padded - self.width)).to(torch.int8)
        self.scales[where] = scale
        self.residual[where] = (rows - decoded).norm(dim=1)
        self.code_norms[where] = decoded.norm(dim=1)

    def truncate(self, length: int) -> None:
        if length < self.length:
            self._reference = self._gathered = None
        self.length = min(length, self.length)

    def products(self, keys: Tensor) -> Tensor:
        """M K [rows, n] in fp32 without gradient: one key through the transposed copy where kept,
        else `times` (several keys)."""
        keys = keys.to(self.rows.dtype)
        if self.transposed and keys.shape[1] == 1:
            return (keys.T @ self.columns[:, : self.length]).T
        return times(self.matrix, keys)

    def entries(self, keys: Tensor, bias: Tensor, flat: Tensor) -> Tensor:
        """Entries (row, patch) of M K + b at flat indices, with gradient through K and b."""
        n = keys.shape[1]
        rows, cols = flat // n, flat % n
        # (M[rows] K) then pick each row's patch: a small matmul whose backward is a matmul, where
        # gathering K's columns per entry would scatter-add k gradients row by row.
        picked = (self._gather(rows).to(keys.dtype) @ keys).gather(1, cols[:, None]).squeeze(1)
        return picked + bias[cols]

    def _gather(self, rows: Tensor) -> Tensor:
        """M[rows]: from the rows this step rescored where they hold them all (the same values)."""
        if self._gathered is not None and len(self._gathered[0]):
            kept, block = self._gathered
            at = torch.searchsorted(kept, rows).clamp_(max=len(kept) - 1)
            if bool((kept[at] == rows).all()):
                return block.index_select(0, at)
        return self.rows.index_select(0, rows)

    @torch.no_grad()
    def top_entries(self, keys: Tensor, bias: Tensor, shifts: list[Tensor], k: int) -> list[Tensor]:
        """For each shift (a value per patch): flat indices of the top-k entries of
        M K + b + shift. One scan of M serves every shift; with one patch every shift ranks the
        entries alike, so its top-k is found once (the same tensor is returned for each)."""
        n, wanted = keys.shape[1], len(shifts)
        self._gathered = None
        if n == 1:  # one patch: every shift ranks the entries alike
            shifts = shifts[:1]
        found = self._reused_top(keys, bias, shifts, min(k, self.length * n)) if self.reuse else None
        if found is None:
            scan = self._timed_top if self.trial is not None else self._top
            found = scan(keys, bias, shifts, k)
        if self._reference is not None:
            self._reference.found = found
        return found * wanted if n == 1 else found

    def _top(self, keys: Tensor, bias: Tensor, shifts: list[Tensor], k: int) -> list[Tensor]:
        """A scan of every row: int8-bounded where that pays, else fp32."""
        n = keys.shape[1]
        kk = min(k, self.length * n)
        found = None
        if self.quantized and self._bounding_pays(n, k):
            found = self._bounded_top(keys, bias, shifts, kk)
        if found is None:
            self.scans["full"] += 1
            products = self.products(keys)
            if self.reuse:
                self._keep(keys, products, self._rounding_error(slice(0, self.length), keys))
            full = products + bias
            found = [(full + shift).flatten().topk(kk).indices for shift in shifts]
        return found

    def _bounding_pays(self, n: int, k: int) -> bool:
        """Whether a bounded scan (int8, reused) is tried at all: the top-k must be a small part of
        the entries."""
        return self.length * n > 4 * min(k, self.length * n)

    def _keep(self, keys: Tensor, values: Tensor, error: Tensor, rows: Tensor | None = None,
              exact: Tensor | None = None, fresh: bool = True) -> None:
        """reuse: the products of `keys` (bias left out) and a bound on their error, for the next
        step to bound its own from; `rows` were rescored in fp32 (`exact`), so they are known to
        rounding again (they are the rows near the top-k, where a tight bound counts)."""
        if not self.reuse:
            return
        if rows is not None:
            values[rows] = exact
            error[rows] = self._rounding_error(rows, keys)
        self._reference = _Scan(keys.clone(), values, error, fresh=fresh)

    def _rounding_error(self, rows, keys: Tensor) -> Tensor:
        """|fl(M_i.K_j) - M_i.K_j| <= gamma_width |M_i| |K_j| for the given rows."""
        return self.rounding * self.norms[rows, None] * keys.norm(dim=0)

    def _reused_top(self, keys: Tensor, bias: Tensor, shifts: list, k: int) -> list[Tensor] | None:
        """The top-k entries from the previous step's intervals and the keys' move since (module
        docstring), or None where there are none for these rows and patches, or the bound leaves
        more than a quarter of the rows to rescore."""
        ref, n = self._reference, keys.shape[1]
        if (ref is None or ref.keys.shape != keys.shape or ref.found is None or len(ref.found) != len(shifts)
                or any(len(before) < k for before in ref.found) or not self._bounding_pays(n, k)):
            return None  # (tau below needs k distinct entries of the previous step)
        if self._skip:
            self._skip -= 1
            self.scans["paused"] += 1
            return None
        keys = keys.to(self.rows.dtype)
        drift = keys - ref.keys
        size = drift.norm(dim=0)  # [n]
        moved = ref.values + self.centre @ drift
        estimate = moved + bias
        # (M_i - c).D_j by Cauchy-Schwarz; the rounding of c.D, of D itself and of |M_i - c|
        error = (ref.error + (1 + 1e-3) * self.spread[: self.length, None] * size
                 + self.rounding * (self.centre.norm() + self.norms[: self.length, None]) * size)
        needed = torch.zeros(self.length, dtype=torch.bool, device=keys.device)
        for shift, before in zip(shifts, ref.found):
            low, high = estimate - error + shift, estimate + error + shift
            tau = low.flatten()[before].min()  # k distinct entries are at least this large
            needed |= (high >= tau).any(1)
        rows = needed.nonzero().squeeze(1)
        if 4 * len(rows) > self.length:
            if ref.fresh:  # pause attempts for 1, 2, 4, 8 steps in a row of such failures
                self._pause = min(2 * self._pause or 1, 8)
                self._skip = self._pause
            return None
        self._pause = 0
        self.scans["reused"] += 1
        self.scans["reused_rows"] += len(rows)
        found, products = self._rescore(rows, keys, bias, shifts, k)
        self._keep(keys, moved, error, rows, products, fresh=False)  # the next step bounds its move from here
        return found

    def _rescore(self, rows: Tensor, keys: Tensor, bias: Tensor, shifts: list, k: int) -> tuple[list[Tensor], Tensor]:
        """The top-k entries among `rows` (which hold every top-k entry), from their fp32 products
        (also returned, bias left out), as flat indices into the whole memory's entries."""
        n = keys.shape[1]
        block = self.rows.index_select(0, rows)  # index_select: 3x faster than rows[...]
        self._gathered = (rows, block)  # `rows` is sorted (nonzero's order)
        exact = times(block, keys)
        found = []
        for shift in shifts:
            local = (exact + bias + shift).flatten().topk(k).indices
            found.append(rows[local // n] * n + local % n)
        return found, exact

    def start_trial(self, scans: int = 5) -> None:
        """memory_scan=auto: the next 2 x `scans` scans alternate between the int8-bounded and the
        fp32 scan, each timed inside the run's own edits, and then only the faster is kept (the
        int8 copy is dropped where fp32 wins). Both find the same top-k, so this decides speed
        alone. Timed in the edits, not on a probe key: the int8 scan's cost grows with the rows its
        bound cannot rule out, which grows as an edit moves its keys (a SmolLM2-sized memory of 40k
        rows: ~3,300 rescored rows a scan mid-edit, int8 slower than fp32 there, faster on the
        edit's first key)."""
        self.trial = {"int8": [], "fp32": []} if self.quantized else None
        self.trial_scans = scans

    def _timed_top(self, keys: Tensor, bias: Tensor, shifts: list[Tensor], k: int) -> list[Tensor]:
        """One trial scan, in whichever mode has been timed less so far (none while the memory is
        too small for the int8 scan to be tried)."""
        trial = self.trial
        if not self._bounding_pays(keys.shape[1], k):
            return self._top(keys, bias, shifts, k)
        mode = "int8" if len(trial["int8"]) <= len(trial["fp32"]) else "fp32"
        self.quantized, start = mode == "int8", time.perf_counter()
        try:
            found = self._top(keys, bias, shifts, k)
        finally:
            self.quantized = True  # the int8 buffers stay in step with the rows until decided
        trial[mode].append(time.perf_counter() - start)
        if min(len(t) for t in trial.values()) >= self.trial_scans:
            self._keep_faster()
        return found

    def _keep_faster(self) -> None:
        self.scan_ms = {mode: 1000 * statistics.median(t) for mode, t in self.trial.items()}
        self.trial = None
        if self.scan_ms["fp32"] <= self.scan_ms["int8"]:
            self.quantized = False
            for name in ("codes", "scales", "residual", "code_norms"):
                delattr(self, name)

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
        products = raw + self.centre @ keys
        approx = products + bias
        needed = torch.zeros(self.length, dtype=torch.bool, device=keys.device)
        for shift in shifts:
            tau = (approx - bound + shift).flatten().topk(k).values[-1]
            needed |= ((approx + bound + shift) >= tau).any(1)
        rows = needed.nonzero().squeeze(1)
        if 2 * len(rows) > self.length:
            return None
        self.scans["bounded"] += 1
        self.scans["rescored_rows"] += len(rows)
        found, exact = self._rescore(rows, keys, bias, shifts, k)
        self._keep(keys, products, bound, rows, exact)
        return found
