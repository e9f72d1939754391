"""Zarr stores -> training batches: chunk-aware streaming, bad-trace filtering, index split.

Why chunk-aware readers and not ``ray.data.read_zarr``: Ray 2.60's ``read_zarr`` reads Zarr v2
stores only, and farm stores are Zarr v3. Each Ray Train worker therefore reads whole store
chunks itself (its shard of them), keeps a small shuffle buffer of chunks, and prefetches the
next chunk on a thread, so a store larger than RAM trains with a few chunks in memory.

Three disjoint splits, each a pure function of the sample index (farm.kernel.rng's splitmix64
hash), so they are the same whatever the chunking, number of workers or resumption: ``train`` (80 %
by default), ``val`` (10 %: early stopping, the classifier's recall threshold) and ``test`` (10 %:
the held-out check written into the artifact, and :func:`split_rows` for other held-out
calibrations). Standardisation is fitted on the training split only (sbi: "use only training data
for building the neural net").
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from farm.defaults import EMULATOR_VERSION, ChipModel, Protocol, Regime
from farm.store.sim_store import SimStore, StoreMismatch
from inference.data.prefetch import background
from inference.data.quality import quality_flags

# is_validation: re-exported for old callers
from inference.data.splits import SPLITS, is_validation, split_of  # noqa: F401

log = logging.getLogger(__name__)

#: Fields a batch can carry; ``label`` (in regime, 0/1 float32) is derived from ``spike_count``,
#: ``circuit`` (a circuit-aware run's fingerprint statistics) read from arrays ``attach``-ed.
FIELDS = ("theta", "features", "trace", "spike_count", "label", "circuit")


@dataclass(frozen=True)
class ChunkRef:
    """One store chunk: the unit of reading and of sharding over workers."""

    store: int
    chunk: int
    start: int
    stop: int


class PriorMismatch(StoreMismatch):
    """Stores drawn from different priors: one training set must come from one prior (exit 2)."""


def prior_label(prior: dict[str, Any] | None) -> str:
    """A short name of a store's prior: ``restricted <fingerprint>`` or ``box <hash of bounds>``."""
    if isinstance(prior, dict) and prior.get("type") == "restricted":
        return f"restricted {prior.get('fingerprint')}"
    return "box " + hashlib.sha256(json.dumps(prior or {}, sort_keys=True).encode()).hexdigest()[:8]


class StoreSet:
    """One or more compatible stores read as one training set.

    Args:
        urls: store paths or fsspec URLs written by `farm simulate`.

    Raises:
        StoreMismatch: a store is missing, not a farm store, or was made with another protocol,
            chip model, regime, emulator version or trace length than the first.
        PriorMismatch: a store was drawn from another prior than the first (a posterior
            trained on a mixture would be the posterior of neither prior).
    """

    def __init__(self, urls: Sequence[str]) -> None:
        if not urls:
            raise ValueError("stores=[] is empty; give at least one --store")
        self.urls = [str(u) for u in urls]
        self.stores = [SimStore.open(u) for u in self.urls]
        first = self.stores[0].attrs
        for url, s in zip(self.urls[1:], self.stores[1:], strict=True):
            for key in ("emulator_version", "protocol", "chip_model", "regime", "substrate"):
                if s.attrs.get(key) != first.get(key):
                    raise StoreMismatch(
                        f"store={url!r} has {key}={s.attrs.get(key)!r}, "
                        f"unlike store={self.urls[0]!r}; train on stores of one setup"
                    )
        if first.get("emulator_version") != EMULATOR_VERSION:
            raise StoreMismatch(
                f"store={self.urls[0]!r} has emulator_version={first.get('emulator_version')!r}; "
                f"this farm is {EMULATOR_VERSION}: re-simulate"
            )
        self.protocol = Protocol.from_dict(first["protocol"])
        self.chip_model = ChipModel.from_dict(first["chip_model"])
        self.regime = Regime(**first.get("regime", {}))
        self.priors = [s.attrs.get("prior") for s in self.stores]
        for url, p in zip(self.urls[1:], self.priors[1:], strict=True):
            if prior_label(p) != prior_label(self.priors[0]):
                raise PriorMismatch(
                    f"store={url!r} was drawn from prior {prior_label(p)}, "
                    f"store={self.urls[0]!r} from prior {prior_label(self.priors[0])}; "
                    "train on stores of one prior"
                )
        self.chunks: list[ChunkRef] = []
        for k, s in enumerate(self.stores):
            for c in np.flatnonzero(s.done_mask()):
                start, stop = s.chunk_bounds(int(c))
                self.chunks.append(ChunkRef(k, int(c), start, stop))
        if not self.chunks:
            raise StoreMismatch(
                f"stores={self.urls} hold no completed chunk; finish `farm simulate` first"
            )
        #: Per-row arrays kept beside the stores (one per store, indexed by sample), by field.
        self.attached: dict[str, list[Any]] = {}

    def attach(self, name: str, arrays: Sequence[Any]) -> None:
        """Serve field ``name`` from ``arrays[k][index]`` for rows of store k (e.g. a cache)."""
        if len(arrays) != len(self.stores):
            raise ValueError(f"{name}: {len(arrays)} arrays for {len(self.stores)} stores")
        self.attached[name] = list(arrays)

    @property
    def num_samples(self) -> int:
        return sum(c.stop - c.start for c in self.chunks)

    @property
    def fingerprint(self) -> str:
        """Hash of what the stores hold: identity attributes and the completed chunks."""
        h = hashlib.sha256()
        for s in self.stores:
            ident = {
                k: s.attrs.get(k)
                for k in (
                    "seed",
                    "num_sims",
                    "chunk_size",
                    "prior",
                    "protocol",
                    "chip_model",
                    "emulator_version",
                    "theta_source",
                    "substrate",
                )
            }
            h.update(json.dumps(ident, sort_keys=True).encode())
            h.update(np.packbits(s.done_mask()).tobytes())
        return h.hexdigest()[:16]

    def read(self, ref: ChunkRef, fields: Sequence[str]) -> dict[str, NDArray[Any]]:
        """All rows of one chunk; adds ``index`` (sample index in its store) and ``store``."""
        g = self.stores[ref.store].group
        out: dict[str, NDArray[Any]] = {}
        for name in fields:
            if name == "label":
                continue
            source = self.attached[name][ref.store] if name in self.attached else g[name]
            out[name] = np.asarray(source[ref.start : ref.stop])
        if "label" in fields:
            sc = (
                out["spike_count"]
                if "spike_count" in out
                else np.asarray(g["spike_count"][ref.start : ref.stop])
            )
            out["label"] = self.regime.contains(sc).astype(np.float32)
        out["index"] = np.arange(ref.start, ref.stop, dtype=np.int64)
        return out


@dataclass
class DataPlan:
    """What a training run reads: stores, chunks, excluded rows, split and standardisation.

    It is built once on the driver by :func:`plan_data` and shipped to the workers as a dict.
    """

    urls: list[str]
    val_fraction: float
    excluded: dict[str, list[int]]  # "store:chunk" -> excluded sample indices
    flag_counts: dict[str, int]
    num_train: int
    num_val: int
    in_regime_fraction: float
    feature_mean: list[float]
    feature_std: list[float]
    theta_mean: list[float]
    theta_std: list[float]
    trace_mean: float | list[float]  # a list (one per sweep) for multi-sweep protocols
    trace_std: float | list[float]
    fingerprint: str
    test_fraction: float = 0.0
    num_test: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def splits(self) -> dict[str, Any]:
        """The split as recorded in artifacts: fractions, row counts and how rows are assigned."""
        return {
            "method": "splitmix64 hash of the sample index (inference.data.datasets.split_of)",
            "train_fraction": 1.0 - self.val_fraction - self.test_fraction,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "rows": {"train": self.num_train, "val": self.num_val, "test": self.num_test},
        }

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataPlan:
        return cls(**d)


def plan_data(stores: StoreSet, val_fraction: float = 0.1, test_fraction: float = 0.1) -> DataPlan:
    """One streaming pass: flag bad rows, count the splits, fit standardisation on train rows.

    Args:
        stores: the training stores.
        val_fraction, test_fraction: shares of sample indices held out for validation and test.

    Returns:
        The plan; bad rows are logged with their counts and excluded everywhere after.
    """
    if not 0.0 < val_fraction < 0.5:
        raise ValueError(f"val_fraction={val_fraction} outside (0, 0.5)")
    if not 0.0 <= test_fraction < 0.5 or val_fraction + test_fraction >= 0.5:
        raise ValueError(
            f"test_fraction={test_fraction} outside [0, 0.5 - val_fraction={val_fraction})"
        )
    adc_max = stores.chip_model.adc_max_code
    counts = {"nan": 0, "saturated": 0, "flat": 0}
    excluded: dict[str, list[int]] = {}
    n_train = n_val = n_test = n_in = 0
    f_sum = f_sq = th_sum = th_sq = None
    num_sweeps = stores.protocol.num_sweeps
    tr_sum, tr_sq = np.zeros(num_sweeps), np.zeros(num_sweeps)
    from inference.nets.transforms import theta_to_unbounded_np

    low, high = box_bounds(stores)
    for ref, rows in prefetch_chunks(
        stores, stores.chunks, ("theta", "features", "trace", "label")
    ):
        flags = quality_flags(rows["trace"], rows["theta"], rows["features"], adc_max)
        bad = flags["nan"] | flags["saturated"] | flags["flat"]
        for k in counts:
            counts[k] += int(flags[k].sum())
        if bad.any():
            excluded[f"{ref.store}:{ref.chunk}"] = rows["index"][bad].tolist()
        split = split_of(rows["index"], val_fraction, test_fraction)
        train = ~bad & (split == 0)
        n_val += int((~bad & (split == 1)).sum())
        n_test += int((~bad & (split == 2)).sum())
        n_train += int(train.sum())
        n_in += int(rows["label"][~bad].sum())
        f = rows["features"][train].astype(np.float64)
        z = theta_to_unbounded_np(rows["theta"][train], low, high)
        tr = (
            rows["trace"][train]
            .astype(np.float64)
            .reshape(-1, num_sweeps, stores.protocol.samples_per_sweep)
        )
        f_sum = f.sum(0) if f_sum is None else f_sum + f.sum(0)
        f_sq = (f**2).sum(0) if f_sq is None else f_sq + (f**2).sum(0)
        th_sum = z.sum(0) if th_sum is None else th_sum + z.sum(0)
        th_sq = (z**2).sum(0) if th_sq is None else th_sq + (z**2).sum(0)
        tr_sum += tr.sum(axis=(0, 2))
        tr_sq += (tr**2).sum(axis=(0, 2))
    if n_train < 2:
        raise StoreMismatch(
            f"stores={stores.urls} have {n_train} usable training samples; "
            f"simulate more (excluded: {counts})"
        )
    total_bad = sum(counts.values())
    if total_bad:
        log.warning(
            "excluded %d bad samples of %d: %s",
            sum(len(v) for v in excluded.values()),
            stores.num_samples,
            ", ".join(f"{k}={v}" for k, v in counts.items()),
        )

    def mean_std(
        s: NDArray[np.float64], sq: NDArray[np.float64], n: int
    ) -> tuple[list[float], list[float]]:
        m = s / n
        sd = np.sqrt(np.maximum(sq / n - m**2, 0.0))
        return m.tolist(), np.where(sd > 1e-8, sd, 1.0).tolist()

    fm, fs = mean_std(f_sum, f_sq, n_train)
    tm, ts = mean_std(th_sum, th_sq, n_train)
    # One sweep: one scalar mean/std of the codes, as always. Several: one per sweep (a list), which
    # also tells the summary network how many sweeps to stack as channels
    # (inference.nets.embeddings).
    n_codes = n_train * stores.protocol.samples_per_sweep
    trm_s = tr_sum / n_codes
    trs_s = np.sqrt(np.maximum(tr_sq / n_codes - trm_s**2, 1e-12))
    trm: float | list[float] = float(trm_s[0]) if num_sweeps == 1 else trm_s.tolist()
    trs: float | list[float] = float(trs_s[0]) if num_sweeps == 1 else trs_s.tolist()
    return DataPlan(
        urls=stores.urls,
        val_fraction=val_fraction,
        excluded=excluded,
        flag_counts=counts,
        num_train=n_train,
        num_val=n_val,
        in_regime_fraction=n_in / max(n_train + n_val + n_test, 1),
        feature_mean=fm,
        feature_std=fs,
        theta_mean=tm,
        theta_std=ts,
        trace_mean=trm,
        trace_std=trs,
        fingerprint=stores.fingerprint,
        test_fraction=test_fraction,
        num_test=n_test,
    )


def box_bounds(stores: StoreSet) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The box all stores' priors live in (restricted priors keep their box)."""
    from farm.defaults import PriorBox

    boxes = []
    for p in stores.priors:
        d = p.get("box", p) if isinstance(p, dict) else {}
        boxes.append(PriorBox.from_dict(d) if d else PriorBox())
    if any(b != boxes[0] for b in boxes):
        raise StoreMismatch(
            f"stores={stores.urls} were drawn from different prior boxes; "
            "train on stores of one box"
        )
    return np.asarray(boxes[0].low), np.asarray(boxes[0].high)


def prefetch_chunks(
    stores: StoreSet, refs: Sequence[ChunkRef], fields: Sequence[str], depth: int = 2
) -> Iterator[tuple[ChunkRef, dict[str, NDArray[Any]]]]:
    """Read chunks on a background thread while the caller computes.

    Zarr decompression releases the GIL, so reading and computing overlap.
    """
    return background(((ref, stores.read(ref, fields)) for ref in refs), depth)


class ChunkStream:
    """Batches of good rows of one split, streamed chunk by chunk from Zarr.

    Args:
        stores: the stores; plan: their :class:`DataPlan`.
        split: ``"train"``, ``"val"`` or ``"test"`` (``SPLITS``).
        fields: arrays to read (subset of ``FIELDS``).
        batch_size: rows per batch.
        rank, world_size: this worker's shard of chunks (chunk k goes to worker k % world_size
            after the per-epoch shuffle, so workers never read the same chunk).
        shuffle_chunks: chunks in the shuffle buffer (rows are permuted across them).
    """

    def __init__(
        self,
        stores: StoreSet,
        plan: DataPlan,
        split: str,
        fields: Sequence[str],
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle_chunks: int = 4,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split={split!r} must be one of {', '.join(SPLITS)}")
        self.stores, self.plan, self.split = stores, plan, split
        self.fields = tuple(dict.fromkeys([*fields, "theta"]))
        self.batch_size, self.rank, self.world_size = int(batch_size), int(rank), int(world_size)
        self.shuffle_chunks = max(1, int(shuffle_chunks))
        self._excluded = {k: np.asarray(v, dtype=np.int64) for k, v in plan.excluded.items()}
        #: Seconds the consumer of :meth:`steady` spent blocked on the reader (the data path's cost
        #: to training).
        self.wait_seconds = 0.0

    def shard(self, epoch: int, shuffle: bool, part: int = 0, parts: int = 1) -> list[ChunkRef]:
        """This worker's chunks of one pass: of part ``part`` of ``parts`` of the epoch's order.

        Parts split one shuffled order, so the parts of an epoch cover every chunk once.
        """
        refs = list(self.stores.chunks)
        if shuffle:
            order = np.random.default_rng([epoch, 0xC0FFEE]).permutation(len(refs))
            refs = [refs[i] for i in order]
        if parts > 1:
            refs = refs[part * len(refs) // parts : (part + 1) * len(refs) // parts]
        return refs[self.rank :: self.world_size]

    def _keep(self, ref: ChunkRef, rows: dict[str, NDArray[Any]]) -> NDArray[np.bool_]:
        keep = split_of(
            rows["index"], self.plan.val_fraction, self.plan.test_fraction
        ) == SPLITS.index(self.split)
        bad = self._excluded.get(f"{ref.store}:{ref.chunk}")
        if bad is not None and bad.size:
            keep &= ~np.isin(rows["index"], bad)
        return keep

    def batches(
        self,
        epoch: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        part: int = 0,
        parts: int = 1,
    ) -> Iterator[dict[str, NDArray[Any]]]:
        """One pass over this worker's shard; with ``shuffle``, rows shuffled in a chunk buffer.

        ``part`` of ``parts``: only that share of the epoch's chunks (see :meth:`shard`).
        """
        seed = [epoch, self.rank, 0xBEEF] + ([part] if parts > 1 else [])
        rng = np.random.default_rng(seed)
        buf: list[dict[str, NDArray[Any]]] = []
        pending: dict[str, NDArray[Any]] | None = None
        refs = self.shard(epoch, shuffle, part, parts)
        for i, (ref, rows) in enumerate(prefetch_chunks(self.stores, refs, self.fields)):
            keep = self._keep(ref, rows)
            buf.append({k: v[keep] for k, v in rows.items()})
            if len(buf) < self.shuffle_chunks and i < len(refs) - 1:
                continue
            block = {
                k: np.concatenate([b[k] for b in ([pending] if pending else []) + buf])
                for k in buf[0]
            }
            buf = []
            n = len(block["theta"])
            perm = rng.permutation(n) if shuffle else np.arange(n)
            full = n - n % self.batch_size
            for s in range(0, full, self.batch_size):
                sel = perm[s : s + self.batch_size]
                yield {k: v[sel] for k, v in block.items()}
            rest = perm[full:]
            pending = {k: v[rest] for k, v in block.items()} if rest.size else None
        if pending is not None and not drop_last:
            yield pending

    def head(self, max_rows: int) -> list[dict[str, NDArray[Any]]]:
        """The first ``max_rows`` rows of this worker's unshuffled shard, in batches, in memory.

        Why: a validation set read once and kept is the same set every round, and costs no
        store reads after; reading stops at the chunk that completes it (0 = the whole shard).
        """
        out: list[dict[str, NDArray[Any]]] = []
        rows = 0
        it = self.batches(0, shuffle=False)
        try:
            for b in it:
                n = len(b["theta"])
                if max_rows and rows + n >= max_rows:
                    out.append({k: v[: max_rows - rows] for k, v in b.items()})
                    break
                out.append(b)
                rows += n
        finally:
            it.close()
        return out

    def steady(
        self, epoch: int, steps: int, ahead: int = 8, part: int = 0, parts: int = 1
    ) -> Iterator[dict[str, NDArray[Any]]]:
        """Exactly ``steps`` full batches, cycling a short shard, built ``ahead`` batches early.

        ``part`` of ``parts``: a round of training reads one share of the epoch's chunks
        (``inference.training.schedule``), so an epoch of a large store is several rounds.

        Why: with DistributedDataParallel every worker must take the same number of steps, and
        chunk shards differ by a few rows (excluded samples, a short last chunk). Decoding and
        batching (split masks, shuffles, row gathers) run on a thread, so the training thread
        only waits when the reader falls behind; that wait accumulates in ``wait_seconds``.
        """
        if ahead <= 0:
            return self._steady(epoch, steps, part, parts)
        return background(self._steady(epoch, steps, part, parts), ahead, self)

    def _steady(
        self, epoch: int, steps: int, part: int = 0, parts: int = 1
    ) -> Iterator[dict[str, NDArray[Any]]]:
        done, cycle = 0, 0
        while done < steps:
            got = False
            for b in self.batches(
                epoch * 1000 + cycle, shuffle=True, drop_last=True, part=part, parts=parts
            ):
                got = True
                yield b
                done += 1
                if done >= steps:
                    return
            if not got:
                raise StoreMismatch(
                    f"worker {self.rank} has no full batch of {self.batch_size} training rows; "
                    "lower --batch-size or --workers"
                )
            cycle += 1
