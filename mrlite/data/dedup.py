"""Near-duplicate detection for growing a prompt pool: normalised text, then Jaccard similarity of character
shingles, found through MinHash locality-sensitive hashing and then checked exactly.

Why not a library: ``datasketch`` (MinHash LSH) imports scipy, which the torch-free orchestrator would then
need; ``rapidfuzz`` compares strings pairwise, which at 20,000 prompts is 2 x 10^8 comparisons. MinHash with
banding is ~60 lines of numpy here, deterministic (polynomial shingle hashes, fixed permutation seeds) and exact in
what it drops: every candidate pair that LSH proposes is verified with the true Jaccard similarity, so nothing
below the threshold is ever dropped (a pair just above it is found with probability >= 0.99 by construction).
Exercised by: ``python benchmarks/prompt_pool.py`` and ``mrlite run paper ...`` (the ``prompts`` stage).
"""

from __future__ import annotations

import re
import numpy as np

NUM_PERM = 64
_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Lower case, whitespace runs collapsed to one space, ends stripped (the key exact duplicates share)."""
    return _SPACE.sub(" ", text).strip().lower()


def shingles(text: str, k: int) -> np.ndarray:
    """Sorted unique hashes of the ``k``-byte shingles of ``text``'s UTF-8 bytes (the whole text when shorter)."""
    return np.unique(_window_hashes(np.frombuffer(text.encode(), dtype=np.uint8), k))


_MULT = np.uint64(0x9E3779B97F4A7C15)


def _window_hashes(b: np.ndarray, k: int) -> np.ndarray:
    """One 64-bit hash per ``k``-byte window of ``b`` (polynomial, wrapping uint64); the whole array if shorter."""
    x = b.astype(np.uint64)
    if len(x) < k:
        k = max(1, len(x))
        if len(x) == 0:
            return np.zeros(1, dtype=np.uint64)
    n = len(x) - k + 1
    h = np.zeros(n, dtype=np.uint64)
    for j in range(k):
        h = h * _MULT + x[j:j + n] + np.uint64(1)
    return h ^ (h >> np.uint64(29))


def batch_shingles(texts: list[str], k: int) -> list[np.ndarray]:
    """``shingles`` of many texts in one vectorised pass (what ``NearDuplicateIndex`` stores per kept text)."""
    if not texts:
        return []
    enc = [t.encode() for t in texts]
    short = [i for i, e in enumerate(enc) if len(e) < k]
    if short:  # rare: texts shorter than a shingle are one shingle each, done one by one
        longer = [i for i, e in enumerate(enc) if len(e) >= k]
        out = [shingles(t, k) for t in texts]
        for i, sh in zip(longer, batch_shingles([texts[i] for i in longer], k), strict=True):
            out[i] = sh
        return out
    lens = np.array([len(e) for e in enc])
    b = np.frombuffer(b"".join(enc), dtype=np.uint8)
    h = _window_hashes(b, k)  # windows over the concatenation; those crossing a boundary are dropped below
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    doc = np.repeat(np.arange(len(enc)), lens)[: len(h)]
    pos = np.arange(len(h)) - starts[doc]
    valid = pos <= (lens - k)[doc]
    h, doc = h[valid], doc[valid]
    order = np.lexsort((h, doc))
    h, doc = h[order], doc[order]
    keep = np.ones(len(h), dtype=bool)
    keep[1:] = (h[1:] != h[:-1]) | (doc[1:] != doc[:-1])
    h, doc = h[keep], doc[keep]
    return np.split(h, np.searchsorted(doc, np.arange(1, len(enc))))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two sorted unique hash arrays."""
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


def bands_for(threshold: float, num_perm: int = NUM_PERM, recall: float = 0.99) -> tuple[int, int]:
    """``(bands, rows)``: the most rows per band (fewest false candidates) that still proposes a pair of
    similarity ``threshold`` with probability >= ``recall``."""
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            best = (bands, rows)
    return best


class NearDuplicateIndex:
    """Texts seen so far; ``add`` keeps a text unless it duplicates one of them.

    Args:
        measure: ``"exact"`` (normalised text equal) or ``"jaccard"`` (also drops texts whose character-shingle
            Jaccard similarity to a kept text is >= ``threshold``).
        threshold: Jaccard threshold.
        shingle_chars: Characters per shingle.
    """

    def __init__(self, measure: str = "jaccard", threshold: float = 0.8, shingle_chars: int = 5):
        if measure not in ("exact", "jaccard"):
            raise ValueError(f"unknown similarity measure {measure!r}; use 'exact' or 'jaccard'")
        self.measure, self.threshold, self.k = measure, threshold, shingle_chars
        self.keys: set[str] = set()
        self.sigs: list[np.ndarray] = []
        self.bands, self.rows = bands_for(threshold)
        rng = np.random.default_rng(0x5EED)
        self.a = rng.integers(1, 2**63, size=NUM_PERM, dtype=np.uint64) | np.uint64(1)
        self.b = rng.integers(0, 2**63, size=NUM_PERM, dtype=np.uint64)
        self.band_mult = rng.integers(1, 2**63, size=self.rows, dtype=np.uint64) | np.uint64(1)
        self.buckets: list[dict[int, list[int]]] = [{} for _ in range(self.bands)]

    def _signatures(self, keys: list[str]) -> tuple[list[np.ndarray], np.ndarray]:
        """Shingle sets and LSH band keys of many normalised texts at once (one numpy pass for the MinHash)."""
        sh = batch_shingles(keys, self.k)
        lens = np.array([len(x) for x in sh])
        allsh = np.concatenate(sh)
        # multiply-shift hashing under NUM_PERM random odd multipliers (uint64 wraps on purpose), min per text
        hv = (allsh[:, None] * self.a[None, :] + self.b[None, :]) >> np.uint64(32)
        mh = np.minimum.reduceat(hv, np.concatenate([[0], np.cumsum(lens)[:-1]]), axis=0)
        r = self.rows
        bands = mh[:, : self.bands * r].reshape(len(keys), self.bands, r)
        band_keys = (bands * self.band_mult[None, None, :]).sum(axis=2)  # one uint64 per band
        return sh, band_keys

    def add_many(self, texts: list[str]) -> list[str | None]:
        """``add`` for each text in order (a text may duplicate an earlier one of the same call)."""
        keys = [normalize(t) for t in texts]
        if self.measure == "exact" or not keys:
            return [self._add_exact(k) for k in keys]
        fresh = [i for i, k in enumerate(keys) if k not in self.keys]
        sh, band_keys = self._signatures([keys[i] for i in fresh]) if fresh else ([], None)
        out: list[str | None] = []
        pos = {i: n for n, i in enumerate(fresh)}
        for i, key in enumerate(keys):
            if key in self.keys:
                out.append("exact")
                continue
            n = pos[i]
            bk = band_keys[n].tolist()
            why = self._near(sh[n], bk)
            if why is None:
                self._commit(key, sh[n], bk)
            out.append(why)
        return out

    def _add_exact(self, key: str) -> str | None:
        if key in self.keys:
            return "exact"
        self.keys.add(key)
        return None

    def _near(self, sh: np.ndarray, band_keys: list[int]) -> str | None:
        seen: set[int] = set()
        for bucket, bk in zip(self.buckets, band_keys, strict=True):
            for j in bucket.get(bk, ()):
                if j not in seen:
                    seen.add(j)
                    if jaccard(sh, self.sigs[j]) >= self.threshold:
                        return "near"
        return None

    def _commit(self, key: str, sh: np.ndarray, band_keys: list[int]) -> None:
        self.keys.add(key)
        j = len(self.sigs)
        self.sigs.append(sh)
        for bucket, bk in zip(self.buckets, band_keys, strict=True):
            bucket.setdefault(bk, []).append(j)

    def add(self, text: str) -> str | None:
        """Keep ``text`` (returns None) or say why it is a duplicate (``"exact"`` / ``"near"``)."""
        return self.add_many([text])[0]

    def __len__(self) -> int:
        return len(self.keys)
