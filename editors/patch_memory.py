"""T-Patcher's memory of FFN queries: a store grown in place as the stream goes, read through
its top-k entries only, by one of three scans that find the same top-k.

The memory loss S(M k + b - beta; k) has gradient only at its top-k entries, so each step finds
them without gradient (one scan of M) and recomputes just those k entries with gradient: the same
values and gradients as the full expression, without a backward pass through all of M.

- `QueryStore`: the rows M (and, with `transposed=True`, a transposed copy, which a one-key fp32
  scan reads faster on CPU), their products with keys and gathers of a few rows. The datastore
  editors keep their keys in one too.
- The fp32 scan: M K for every row.
- `Int8Scan`: an int8 copy of M - c (one scale per row; c the mean of the first rows appended, c.k
  added back in fp32: queries share a large common part, and the codes spend their 8 bits on what
  differs). Each score a has a proven error bound e, so with tau the k-th largest lower bound
  a - e, an entry whose upper bound a + e is below tau has k entries strictly above it and is not
  in the top-k: only the rows that the bounds cannot rule out are rescored in fp32, and the result
  is the fp32 scan's top-k, up to entries tied within rounding (the rescored products, over the
  kept rows, round differently from the full scan's). Whether it is faster than the fp32 scan is
  timed in the run's own edits (`QueryMemory.start_trial`).
- `ReusedScan`: most steps read no row of M at all. Between steps the keys move little, and each
  score moves at most as far as Cauchy-Schwarz allows: with K_0 the keys of the previous step,
  D = K - K_0, M_i.K = M_i.K_0 + c.D + S_i (U^T D) + R_i.D, with U the leading principal
  directions of the rows around c (`reuse_rank` of them, from the first rows appended), S_i the
  row's coordinates in them and R_i what they leave: the first terms are computed (n x rank
  products), the last is within |R_i| |D_j| (much smaller than the row's norm). Every entry keeps an
  interval that holds its exact value: after a full scan its fp32 product within rounding (the
  int8 scan's bound where that scan ran); each step moves it by c.D + S_i (U^T D) and widens it
  by that bound.
  With tau a lower bound of the k-th largest true entry (the least lower end among the previous
  step's top-k entries: k distinct entries at least that large), only rows whose upper end
  reaches tau can hold a top-k entry; only they are rescored in fp32, and their intervals shrink
  back to rounding. Where more than a quarter of the rows remain, a full scan runs instead.

`QueryMemory` is what T-Patcher holds: the store and the scans it was given, choosing among them
step by step. What each scan costs and how often the bounded ones agree with the full scan, as
measured, is on the performance page (docs/performance.md, "T-Patcher's memory scans").
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


def times(rows: Tensor, keys: Tensor) -> Tensor:
    """rows @ keys [r, n], computed as F.linear(rows, contiguous keys^T): MKL's product of a tall
    matrix and a few columns runs several times faster that way (timed: docs/performance.md). A
    rule by shape, not a timed choice, so that a run's rounding does not depend on the machine's load."""
    return F.linear(rows, keys.T.contiguous())


class RowBuffers:
    """Per-row buffers a scan keeps beside the store's rows (`names`), grown and moved with them."""

    names: tuple[str, ...] = ()

    def grow(self, size: int, length: int, device) -> None:
        for name in self.names:
            old = getattr(self, name)
            grown = torch.zeros(size, *old.shape[1:], dtype=old.dtype, device=device)
            grown[:length] = old[:length]
            setattr(self, name, grown)

    def to(self, device) -> None:
        for name in self.names:
            setattr(self, name, getattr(self, name).to(device))

    def add(self, store: QueryStore, new: Tensor, where: slice) -> None:
        raise NotImplementedError


class QueryStore:
    """The rows M, appended in place (grown geometrically: never re-concatenated per step)."""

    def __init__(self, width: int, transposed: bool = False):
        self.width = width
        self.rows = torch.zeros(0, width)
        # transposed=True: the same rows also transposed, [width, capacity], for the fp32 scan of one
        # key (on CPU k^T M^T reads M about twice as fast as M k; several keys go through `times`),
        # for twice the memory; the row-major copy serves the gathers of a few rows
        self.transposed = transposed
        self.columns = torch.zeros(width, 0)
        self.length = 0
        self.centre: Tensor | None = None  # c, the mean of the first rows appended, where a scan needs it
        self.followers: list[RowBuffers] = []  # the scans' per-row buffers, kept in step with the rows

    def __len__(self) -> int:
        return self.length

    @property
    def matrix(self) -> Tensor:
        return self.rows[: self.length]

    def to(self, device) -> QueryStore:
        self.rows, self.columns = self.rows.to(device), self.columns.to(device)
        if self.centre is not None:
            self.centre = self.centre.to(device)
        for follower in self.followers:
            follower.to(device)
        return self

    def append(self, rows: Tensor) -> None:
        need = self.length + len(rows)
        if need > len(self.rows):
            self._grow(max(need, 2 * len(self.rows)), rows.device)
        new = rows.to(self.rows.dtype)
        self.rows[self.length : need] = new
        if self.transposed:
            self.columns[:, self.length : need] = new.T
        if len(new) and self.followers:
            if self.centre is None:
                self.centre = new.mean(0)
            for follower in self.followers:
                follower.add(self, new, slice(self.length, need))
        self.length = need

    def _grow(self, size: int, device) -> None:
        grown = torch.zeros(size, self.width, dtype=self.rows.dtype, device=device)
        grown[: self.length] = self.rows[: self.length]
        self.rows = grown
        if self.transposed:
            columns = torch.zeros(self.width, size, dtype=self.columns.dtype, device=device)
            columns[:, : self.length] = self.columns[:, : self.length]
            self.columns = columns
        for follower in self.followers:
            follower.grow(size, self.length, device)

    def truncate(self, length: int) -> None:
        self.length = min(length, self.length)

    def products(self, keys: Tensor) -> Tensor:
        """M K [rows, n] in fp32 without gradient: one key through the transposed copy where kept,
        else `times` (several keys)."""
        keys = keys.to(self.rows.dtype)
        if self.transposed and keys.shape[1] == 1:
            return (keys.T @ self.columns[:, : self.length]).T
        return times(self.matrix, keys)

    def select(self, rows: Tensor) -> Tensor:
        return self.rows.index_select(0, rows)  # index_select: 3x faster than rows[...]


@dataclass
class _Interval:
    """What `ReusedScan` keeps of the last step: its keys, M K (bias left out) within `error` of the
    exact products, and the top-k entries it found (per shift)."""

    keys: Tensor
    values: Tensor
    error: Tensor
    found: list[Tensor] | None = None
    fresh: bool = True  # from a scan of every row (False: from a reused step's intervals)


class Int8Scan(RowBuffers):
    """Scores every row through an int8 copy of M - c with a proven error bound per score, and
    names the rows whose bound does not rule them out of the top-k."""

    names = ("codes", "scales", "residual", "code_norms")

    def __init__(self, width: int):
        self.width = width
        self.padded = -(-width // PAD) * PAD
        self.codes = torch.zeros(0, self.padded, dtype=torch.int8)  # round((M_i - c) / s_i)
        self.scales = torch.zeros(0, dtype=torch.bfloat16)  # s_i, as the kernel reads it
        self.residual = torch.zeros(0)  # |M_i - c - s_i codes_i|, exact
        self.code_norms = torch.zeros(0)  # |s_i codes_i|

    def add(self, store: QueryStore, new: Tensor, where: slice) -> None:
        rows = new - store.centre
        scale = (rows.abs().amax(1) / 127).clamp_min(1e-30).to(torch.bfloat16)
        codes = (rows / scale.float()[:, None]).round().clamp(-127, 127)
        decoded = codes * scale.float()[:, None]
        self.codes[where] = F.pad(codes, (0, self.padded - self.width)).to(torch.int8)
        self.scales[where] = scale
        self.residual[where] = (rows - decoded).norm(dim=1)
        self.code_norms[where] = decoded.norm(dim=1)

    def candidates(self, store: QueryStore, keys: Tensor, bias: Tensor, shifts: list[Tensor],
                   k: int) -> tuple[Tensor, Tensor, Tensor] | None:
        """(rows that may hold a top-k entry, approximate products M K, their error bound), or None
        where more than half the rows remain (then a plain fp32 scan is cheaper)."""
        n = store.length
        short = F.pad(keys.T, (0, self.padded - self.width)).to(torch.bfloat16).contiguous()  # [n, padded]
        raw = torch.ops.aten._weight_int8pack_mm(short, self.codes[:n], self.scales[:n])
        raw = raw.float().T  # [rows, n]
        # with X_i = M_i - c and codes z_i:
        # |X_i.k - a_i| <= |X_i - s_i z_i| |k|  (int8 rounding of the row, Cauchy-Schwarz)
        #               + |s_i z_i| (|k - bf16(k)| + 1e-4 |k|)  (bf16 input; fp32 accumulation)
        #               + 2^-8 |a_i|  (bf16 output); measured below half of this, doubled for margin
        norm = keys.norm(dim=0)
        input_error = (keys - short[:, : self.width].float().T).norm(dim=0) + 1e-4 * norm
        bound = 2 * (self.residual[:n, None] * norm + self.code_norms[:n, None] * input_error
                     + raw.abs() * 2**-8 + 1e-6 * store.centre.norm() * norm)
        products = raw + store.centre @ keys
        approx = products + bias
        needed = torch.zeros(n, dtype=torch.bool, device=keys.device)
        for shift in shifts:
            tau = (approx - bound + shift).flatten().topk(k).values[-1]
            needed |= ((approx + bound + shift) >= tau).any(1)
        rows = needed.nonzero().squeeze(1)
        return None if 2 * len(rows) > n else (rows, products, bound)


class ReusedScan(RowBuffers):
    """Bounds this step's scores from the last step's intervals and the keys' move since, and names
    the rows that may hold a top-k entry; keeps each step's intervals for the next.

    With a basis U (`rank` principal directions of the first rows appended, around c), each row is
    M_i = c + S_i U^T + R_i with S_i = (M_i - c) U kept, so M_i.D = c.D + S_i (U^T D) + R_i.D: the
    first two terms are computed (n x rank products instead of n x width) and only |R_i| |D| is
    bounded, where R_i is what the basis leaves of the row (its exact remainder, whatever the
    rounding of S and U: the identity holds for any U)."""

    names = ("spread", "norms", "coords", "coord_norms")

    def __init__(self, width: int, rank: int = 0):
        self.rounding = 2 * width * 2.0**-24  # fp32 rounding of a width-long dot product, relative to |x| |y|
        self.rank = rank
        self.basis: Tensor | None = None  # U [width, r], r <= rank, from the first rows appended
        self.basis_norm = 0.0  # |U|_F (the rounding margin of U^T D)
        self.spread = torch.zeros(0)  # |R_i|: |M_i - c| where the basis is empty
        self.norms = torch.zeros(0)  # |M_i| (the rounding margins)
        self.coords = torch.zeros(0, rank)  # S_i
        self.coord_norms = torch.zeros(0)  # |S_i| (the rounding margins)
        self.last: _Interval | None = None
        # attempts to skip, and the next such pause: where even one step's move from a fresh scan
        # leaves too many rows, the keys move too fast for reuse, and each attempt only costs
        self.skip = self.pause = 0

    def _start_basis(self, rows: Tensor) -> None:
        """The `rank` leading principal directions of these rows around c (fewer for fewer rows)."""
        r = min(self.rank, len(rows) - 1)
        if r <= 0:
            self.basis = rows.new_zeros(rows.shape[1], 0)
            return
        centred = rows.double()
        _, vectors = torch.linalg.eigh(centred.T @ centred)
        self.basis = vectors[:, -r:].flip(1).to(rows.dtype).contiguous()
        self.basis_norm = float(self.basis.norm())

    def add(self, store: QueryStore, new: Tensor, where: slice) -> None:
        centred = new - store.centre
        if self.basis is None:
            self._start_basis(centred)
        r = self.basis.shape[1]
        coords = centred @ self.basis
        self.coords[where] = F.pad(coords, (0, self.rank - r))
        self.coord_norms[where] = coords.norm(dim=1)
        # the remainder in float64 from the stored fp32 values, rounded up past fp32's rounding of the norm
        remainder = (new.double() - store.centre.double()) - coords.double() @ self.basis.double().T
        self.spread[where] = (remainder.norm(dim=1) * (1 + 1e-6)).to(self.spread.dtype)
        self.norms[where] = new.norm(dim=1)

    def to(self, device) -> None:
        super().to(device)
        if self.basis is not None:
            self.basis = self.basis.to(device)

    def rounding_error(self, rows, keys: Tensor) -> Tensor:
        """|fl(M_i.K_j) - M_i.K_j| <= gamma_width |M_i| |K_j| for the given rows."""
        return self.rounding * self.norms[rows, None] * keys.norm(dim=0)

    def keep(self, keys: Tensor, values: Tensor, error: Tensor, rows: Tensor | None = None,
             exact: Tensor | None = None, fresh: bool = True) -> None:
        """The products of `keys` (bias left out) and a bound on their error, for the next step to
        bound its own from; `rows` were rescored in fp32 (`exact`), so they are known to rounding
        again (they are the rows near the top-k, where a tight bound counts)."""
        if rows is not None:
            values[rows] = exact
            error[rows] = self.rounding_error(rows, keys)
        self.last = _Interval(keys.clone(), values, error, fresh=fresh)

    def candidates(self, store: QueryStore, keys: Tensor, bias: Tensor, shifts: list,
                   k: int) -> tuple[Tensor, Tensor, Tensor] | None | str:
        """(rows that may hold a top-k entry, moved products, their error bound); None where the last
        step left nothing for these rows and patches or the bound leaves more than a quarter of the
        rows; "paused" while attempts are paused."""
        last, n = self.last, store.length
        if (last is None or last.keys.shape != keys.shape or last.found is None or len(last.found) != len(shifts)
                or any(len(before) < k for before in last.found)):
            return None  # (tau below needs k distinct entries of the previous step)
        if self.skip:
            self.skip -= 1
            return "paused"
        drift = keys - last.keys
        size = drift.norm(dim=0)  # [n]
        moved = last.values + store.centre @ drift
        # R_i.D_j by Cauchy-Schwarz; the rounding of c.D, of D itself and of |R_i|
        error = (last.error + (1 + 1e-3) * self.spread[:n, None] * size
                 + self.rounding * (store.centre.norm() + self.norms[:n, None]) * size)
        r = self.basis.shape[1]
        if r:  # S_i (U^T D_j), within the rounding of both products (|U|_F bounds U^T's)
            projected = self.basis.T @ drift  # [r, n]
            moved = moved + times(self.coords[:n, :r], projected)
            margin = projected.norm(dim=0) + self.basis_norm * size
            error = error + self.rounding * self.coord_norms[:n, None] * margin
        estimate = moved + bias
        needed = torch.zeros(n, dtype=torch.bool, device=keys.device)
        for shift, before in zip(shifts, last.found):
            low, high = estimate - error + shift, estimate + error + shift
            tau = low.flatten()[before].min()  # k distinct entries are at least this large
            needed |= (high >= tau).any(1)
        rows = needed.nonzero().squeeze(1)
        if 4 * len(rows) > n:
            if last.fresh:  # pause attempts for 1, 2, 4, 8 steps in a row of such failures
                self.pause = min(2 * self.pause or 1, 8)
                self.skip = self.pause
            return None
        self.pause = 0
        return rows, moved, error


class QueryMemory:
    """T-Patcher's memory: a `QueryStore` and the scans chosen for it (fp32 always; `quantized`:
    the int8-bounded scan, CPU only; `reuse`: bounds from the previous step)."""

    def __init__(self, width: int, quantized: bool = False, transposed: bool = False, reuse: bool = False,
                 reuse_rank: int = 32):
        self.store = QueryStore(width, transposed)
        self.int8 = Int8Scan(width) if quantized and QUANTIZED_SCAN else None
        self.reused = ReusedScan(width, reuse_rank) if reuse else None
        self.store.followers = [scan for scan in (self.int8, self.reused) if scan is not None]
        self._int8_on = True  # off while the trial times an fp32 scan
        # the rows this step's bounded scan rescored (sorted indices) and their copy: `entries`
        # then gathers from this small block, still in cache, instead of from all of M
        self._gathered: tuple[Tensor, Tensor] | None = None
        # what the scans cost, for reports: full fp32 scans, int8-bounded ones and the rows they
        # rescored, reused ones (no scan) and the rows they rescored, paused reuse attempts
        self.scans = {"full": 0, "bounded": 0, "rescored_rows": 0, "reused": 0, "reused_rows": 0, "paused": 0}
        self.trial: dict[str, list[float]] | None = None  # memory_scan=auto's timings, see start_trial
        self.trial_scans = 0
        self.scan_ms: dict[str, float] = {}  # its result: median ms of each scan

    # -- the store -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.store)

    @property
    def width(self) -> int:
        return self.store.width

    @property
    def rows(self) -> Tensor:
        return self.store.rows

    @property
    def matrix(self) -> Tensor:
        return self.store.matrix

    @property
    def quantized(self) -> bool:
        return self.int8 is not None

    @property
    def codes(self) -> Tensor:
        return self.int8.codes

    def to(self, device) -> QueryMemory:
        if self.int8 is not None and torch.device(device).type != "cpu":
            self._drop_int8()  # the int8 kernel is CPU's; elsewhere the fp32 scan is fast anyway
        self._forget()
        self.store.to(device)
        return self

    def append(self, rows: Tensor) -> None:
        self.store.append(rows)
        if len(rows):
            self._forget()

    def truncate(self, length: int) -> None:
        if length < len(self.store):
            self._forget()
        self.store.truncate(length)

    def products(self, keys: Tensor) -> Tensor:
        return self.store.products(keys)

    def _forget(self) -> None:
        self._gathered = None
        if self.reused is not None:
            self.reused.last = None

    def _drop_int8(self) -> None:
        self.store.followers.remove(self.int8)
        self.int8 = None

    # -- entries and the top-k ---------------------------------------------------------------------
    def entries(self, keys: Tensor, bias: Tensor, flat: Tensor) -> Tensor:
        """Entries (row, patch) of M K + b at flat indices, with gradient through K and b."""
        n = keys.shape[1]
        rows, cols = flat // n, flat % n
        # (M[rows] K) then pick each row's patch: a small matmul whose backward is a matmul, where
        # gathering K's columns per entry would scatter-add k gradients row by row.
        picked = (self._gather(rows).to(keys.dtype) @ keys).gather(1, cols[:, None]).squeeze(1)
        return picked + bias[cols]

    def gather_rows(self, rows: Tensor, dtype: torch.dtype) -> Tensor:
        """M[rows] in `dtype`, read as `entries` reads them (the closed-form step's rows)."""
        return self._gather(rows).to(dtype)

    def _gather(self, rows: Tensor) -> Tensor:
        """M[rows]: from the rows this step rescored where they hold them all (the same values)."""
        if self._gathered is not None and len(self._gathered[0]):
            kept, block = self._gathered
            at = torch.searchsorted(kept, rows).clamp_(max=len(kept) - 1)
            if bool((kept[at] == rows).all()):
                return block.index_select(0, at)
        return self.store.select(rows)

    @torch.no_grad()
    def top_entries(self, keys: Tensor, bias: Tensor, shifts: list[Tensor], k: int) -> list[Tensor]:
        """For each shift (a value per patch): flat indices of the top-k entries of
        M K + b + shift. One scan of M serves every shift; with one patch every shift ranks the
        entries alike, so its top-k is found once (the same tensor is returned for each)."""
        n, wanted = keys.shape[1], len(shifts)
        self._gathered = None
        if n == 1:  # one patch: every shift ranks the entries alike
            shifts = shifts[:1]
        found = self._reused_top(keys, bias, shifts, min(k, len(self) * n)) if self.reused is not None else None
        if found is None:
            scan = self._timed_top if self.trial is not None else self._top
            found = scan(keys, bias, shifts, k)
        if self.reused is not None and self.reused.last is not None:
            self.reused.last.found = found
        return found * wanted if n == 1 else found

    def _top(self, keys: Tensor, bias: Tensor, shifts: list[Tensor], k: int) -> list[Tensor]:
        """A scan of every row: int8-bounded where that pays, else fp32."""
        n = keys.shape[1]
        kk = min(k, len(self) * n)
        found = None
        if self.int8 is not None and self._int8_on and self._bounding_pays(n, k):
            found = self._bounded_top(keys, bias, shifts, kk)
        if found is None:
            self.scans["full"] += 1
            products = self.store.products(keys)
            if self.reused is not None:
                self.reused.keep(keys, products, self.reused.rounding_error(slice(0, len(self)), keys))
            full = products + bias
            found = [(full + shift).flatten().topk(kk).indices for shift in shifts]
        return found

    def _bounding_pays(self, n: int, k: int) -> bool:
        """Whether a bounded scan (int8, reused) is tried at all: the top-k must be a small part of
        the entries."""
        return len(self) * n > 4 * min(k, len(self) * n)

    def _bounded_top(self, keys: Tensor, bias: Tensor, shifts: list[Tensor], k: int) -> list[Tensor] | None:
        keys = keys.to(self.store.rows.dtype)
        candidates = self.int8.candidates(self.store, keys, bias, shifts, k)
        if candidates is None:
            return None
        rows, products, bound = candidates
        self.scans["bounded"] += 1
        self.scans["rescored_rows"] += len(rows)
        found, exact = self._rescore(rows, keys, bias, shifts, k)
        if self.reused is not None:
            self.reused.keep(keys, products, bound, rows, exact)
        return found

    def _reused_top(self, keys: Tensor, bias: Tensor, shifts: list, k: int) -> list[Tensor] | None:
        if not self._bounding_pays(keys.shape[1], k):
            return None
        keys = keys.to(self.store.rows.dtype)
        candidates = self.reused.candidates(self.store, keys, bias, shifts, k)
        if candidates == "paused":
            self.scans["paused"] += 1
            return None
        if candidates is None:
            return None
        rows, moved, error = candidates
        self.scans["reused"] += 1
        self.scans["reused_rows"] += len(rows)
        found, products = self._rescore(rows, keys, bias, shifts, k)
        self.reused.keep(keys, moved, error, rows, products, fresh=False)  # the next step bounds its move from here
        return found

    def _rescore(self, rows: Tensor, keys: Tensor, bias: Tensor, shifts: list, k: int) -> tuple[list[Tensor], Tensor]:
        """The top-k entries among `rows` (which hold every top-k entry), from their fp32 products
        (also returned, bias left out), as flat indices into the whole memory's entries."""
        n = keys.shape[1]
        block = self.store.select(rows)
        self._gathered = (rows, block)  # `rows` is sorted (nonzero's order)
        exact = times(block, keys)
        found = []
        for shift in shifts:
            local = (exact + bias + shift).flatten().topk(k).indices
            found.append(rows[local // n] * n + local % n)
        return found, exact

    # -- memory_scan=auto --------------------------------------------------------------------------
    def start_trial(self, scans: int = 5) -> None:
        """memory_scan=auto: the next 2 x `scans` scans alternate between the int8-bounded and the
        fp32 scan, each timed inside the run's own edits, and then only the faster is kept (the
        int8 copy is dropped where fp32 wins). Both find the same top-k, so this decides speed
        alone. Timed in the edits, not on a probe key: the int8 scan's cost grows with the rows its
        bound cannot rule out, which grows as an edit moves its keys."""
        self.trial = {"int8": [], "fp32": []} if self.int8 is not None else None
        self.trial_scans = scans

    def _timed_top(self, keys: Tensor, bias: Tensor, shifts: list[Tensor], k: int) -> list[Tensor]:
        """One trial scan, in whichever mode has been timed less so far (none while the memory is
        too small for the int8 scan to be tried)."""
        trial = self.trial
        if not self._bounding_pays(keys.shape[1], k):
            return self._top(keys, bias, shifts, k)
        mode = "int8" if len(trial["int8"]) <= len(trial["fp32"]) else "fp32"
        self._int8_on, start = mode == "int8", time.perf_counter()
        try:
            found = self._top(keys, bias, shifts, k)
        finally:
            self._int8_on = True  # the int8 buffers stay in step with the rows until decided
        trial[mode].append(time.perf_counter() - start)
        if min(len(t) for t in trial.values()) >= self.trial_scans:
            self._keep_faster()
        return found

    def _keep_faster(self) -> None:
        self.scan_ms = {mode: 1000 * statistics.median(t) for mode, t in self.trial.items()}
        self.trial = None
        if self.scan_ms["fp32"] <= self.scan_ms["int8"]:
            self._drop_int8()
