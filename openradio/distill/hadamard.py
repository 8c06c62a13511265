"""Normalised Hadamard matrices for PHI-S.

PHI-S rotates the PCA basis of a teacher's features with a Hadamard matrix H (orthogonal, every
entry +-1/sqrt(C)).  Because every entry has the same magnitude, each output channel receives an
equal share of every eigenvalue, so all channels end up with the same variance.  A general random
rotation is orthogonal but does not have this property, which is why a true Hadamard matrix is
preferred and the random fallback warns.

Constructions:

* Sylvester: H(1) = [1], H(2n) = [[H, H], [H, -H]] -- every power of two.
* Paley I:  order q + 1 for a prime q = 3 (mod 4).
* Paley II: order 2 (q + 1) for a prime q = 1 (mod 4).
* Kronecker products of the above (the product of two Hadamard matrices is Hadamard), which covers
  every size the released teachers use: 192 = 16*12, 384 = 32*12, 768 = 64*12, 1152 = 32*36,
  1280 = 64*20, 1536 = 128*12, and powers of two such as 256 and 1024.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch

__all__ = [
    "get_hadamard_matrix",
    "hadamard_construction",
    "is_hadamard",
]


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def _sylvester(n: int) -> np.ndarray:
    """Unnormalised +-1 Sylvester matrix of order ``n`` (a power of two)."""
    h = np.ones((1, 1), dtype=np.float64)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def _jacobsthal(q: int) -> np.ndarray:
    """Jacobsthal matrix Q[i, j] = chi(j - i) with chi the quadratic character mod the prime q."""
    residues = np.zeros(q, dtype=np.int64)
    residues[(np.arange(1, q) ** 2) % q] = 1
    chi = np.where(residues == 1, 1.0, -1.0)
    chi[0] = 0.0
    idx = (np.arange(q)[None, :] - np.arange(q)[:, None]) % q
    return chi[idx]


def _paley1(order: int) -> np.ndarray:
    """Paley construction I: order q + 1, q prime with q = 3 (mod 4).

    With Q antisymmetric (q = 3 mod 4), S = [[0, 1^T], [-1, Q]] is a skew conference matrix and
    H = I + S is Hadamard.
    """
    q = order - 1
    Q = _jacobsthal(q)
    S = np.zeros((order, order), dtype=np.float64)
    S[0, 1:] = 1.0
    S[1:, 0] = -1.0
    S[1:, 1:] = Q
    return np.eye(order) + S


def _paley2(order: int) -> np.ndarray:
    """Paley construction II: order 2 (q + 1), q prime with q = 1 (mod 4).

    With Q symmetric (q = 1 mod 4), C = [[0, 1^T], [1, Q]] is a symmetric conference matrix; each
    zero becomes [[1, -1], [-1, -1]] and each +-1 becomes +-[[1, 1], [1, -1]].
    """
    q = order // 2 - 1
    Q = _jacobsthal(q)
    C = np.zeros((q + 1, q + 1), dtype=np.float64)
    C[0, 1:] = 1.0
    C[1:, 0] = 1.0
    C[1:, 1:] = Q
    zero_block = np.array([[1.0, -1.0], [-1.0, -1.0]])
    one_block = np.array([[1.0, 1.0], [1.0, -1.0]])
    return np.kron(C, one_block) + np.kron((C == 0).astype(np.float64), zero_block)


def _paley_kind(m: int) -> str | None:
    """Which Paley construction gives order ``m`` (None if neither applies)."""
    if m >= 4 and m % 4 == 0:
        q = m - 1
        if _is_prime(q) and q % 4 == 3:
            return "paley1"
        q = m // 2 - 1
        # Paley II needs q = 1 (mod 4); q = 3 (mod 4) would make Q antisymmetric and the result
        # would not be orthogonal, so this is checked explicitly.
        if _is_prime(q) and q % 4 == 1:
            return "paley2"
    return None


@functools.lru_cache(maxsize=None)
def hadamard_construction(n: int) -> tuple[int, str | None, int]:
    """How ``get_hadamard_matrix(n)`` builds its matrix.

    Returns ``(sylvester_order, paley_kind, paley_order)`` with ``n = sylvester_order * paley_order``;
    ``paley_kind`` is ``None`` for a pure Sylvester matrix (``paley_order == 1``) and ``'random'`` when
    no construction is known and the seeded random orthogonal fallback is used.
    """
    if n < 1:
        raise ValueError(f"Hadamard size must be a positive integer, got {n}.")
    if n & (n - 1) == 0:
        return n, None, 1
    twos = (n & -n).bit_length() - 1  # number of factors of two in n
    if n % 4 == 0:
        # Prefer the largest Sylvester factor: Sylvester blocks are exact and cheap.
        for i in range(twos, -1, -1):
            m = n >> i
            kind = _paley_kind(m)
            if kind is not None:
                return 1 << i, kind, m
    return 1, "random", n


def _random_orthogonal(n: int, seed: int) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    # Fix the column signs so the result is unique for a given seed (QR is sign-ambiguous).
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1.0
    return (q * signs[None, :]).numpy()


def get_hadamard_matrix(n: int, seed: int = 0) -> torch.Tensor:
    """Row-normalised Hadamard matrix of order ``n`` as float64 (orthogonal, entries +-1/sqrt(n)).

    Sizes with no known construction here (every ``n > 2`` that is not a multiple of 4, and
    multiples of 4 outside Sylvester x Paley) get a random orthogonal matrix seeded by ``seed``,
    with a warning: it is orthogonal but its entries are not of equal magnitude, so PHI-S then no
    longer gives exactly unit variance per channel.
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool):
        raise TypeError(f"Hadamard size must be an int, got {type(n).__name__}.")
    n = int(n)
    syl, kind, m = hadamard_construction(n)
    if kind == "random":
        warnings.warn(
            f"No Hadamard matrix of order {n} can be built here (Hadamard orders are 1, 2 and "
            f"multiples of 4; this one is not a Sylvester x Paley product); using a random orthogonal "
            f"matrix (seed {seed}) instead. PHI-S channel variances will then only be approximately equal.",
            stacklevel=2,
        )
        return torch.from_numpy(_random_orthogonal(n, seed))
    # A copy, so callers may modify the result without touching the cache.
    return torch.from_numpy(_build_normalised(n).copy())


@functools.lru_cache(maxsize=8)
def _build_normalised(n: int) -> np.ndarray:
    # Cached: PHI-S recomputes its transform every ~100 steps for every teacher.
    syl, kind, m = hadamard_construction(n)
    h = _sylvester(syl)
    if kind == "paley1":
        h = np.kron(h, _paley1(m))
    elif kind == "paley2":
        h = np.kron(h, _paley2(m))
    return np.ascontiguousarray(h / np.sqrt(n))


def is_hadamard(h: torch.Tensor, atol: float = 1e-10) -> bool:
    """True if ``h`` is orthogonal with every entry equal to +-1/sqrt(n)."""
    n = h.shape[0]
    if h.ndim != 2 or h.shape[1] != n:
        return False
    h = h.to(torch.float64)
    eye = torch.eye(n, dtype=torch.float64)
    entries_ok = torch.allclose(h.abs(), torch.full_like(h, n**-0.5), atol=atol)
    return bool(entries_ok and torch.allclose(h @ h.T, eye, atol=atol))
