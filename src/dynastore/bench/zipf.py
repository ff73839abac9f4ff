"""Zipfian request streams: which item each request asks for, item 0 the most popular.

This is YCSB's ZipfianGenerator (Gray et al., "Quickly generating billion-record synthetic databases",
SIGMOD 1994): P(rank i) is proportional to 1 / (i + 1)^theta, drawn in constant time per sample from a
closed-form approximation of the inverse CDF. The approximation is exact for ranks 0 and 1 and
over-weights the next few (rank 2 by about a fifth at theta 0.99), as YCSB's own generator does.

Ranks are popularity, not places: a caller that needs popular items scattered (over a hash ring, say)
must hash the rank, as YCSB's ScrambledZipfian does.

All randomness comes from the `random.Random` passed in; this module must never use module-level random.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

# YCSB's default skew, used by the Dynamo-style workloads it models.
THETA_DEFAULT = 0.99


def zeta(items: int, theta: float) -> float:
    """The generalised harmonic number: sum of 1 / i^theta for i from 1 to `items`."""
    assert items >= 1, items
    return math.fsum(1.0 / math.pow(i, theta) for i in range(1, items + 1))


@dataclass(frozen=True, slots=True)
class ZipfianGenerator:
    """Ranks 0 .. items - 1 with Zipf(theta) popularity; the constants are computed once in `create`."""

    items: int
    theta: float
    zeta_n: float
    alpha: float
    eta: float

    @classmethod
    def create(cls, items: int, theta: float = THETA_DEFAULT) -> ZipfianGenerator:
        # The approximation divides by 1 - theta and needs two distinct ranks to anchor its curve.
        assert items >= 2, items
        assert 0.0 < theta < 1.0, theta
        zeta_n = zeta(items, theta)
        zeta_2 = zeta(2, theta)
        eta = (1.0 - (2.0 / items) ** (1.0 - theta)) / (1.0 - zeta_2 / zeta_n)
        return cls(items, theta, zeta_n, 1.0 / (1.0 - theta), eta)

    def probability(self, rank: int) -> float:
        """The exact Zipf probability of `rank` (which the sampler approximates beyond rank 1)."""
        assert 0 <= rank < self.items, rank
        return 1.0 / (math.pow(rank + 1, self.theta) * self.zeta_n)

    def sample(self, rng: random.Random, count: int) -> list[int]:
        """`count` ranks drawn independently."""
        assert count >= 0, count
        # Locals keep the loop tight: this runs a million times per benchmark stream.
        items, zeta_n, alpha, eta = self.items, self.zeta_n, self.alpha, self.eta
        second = 1.0 + 0.5**self.theta
        last = items - 1
        draw = rng.random
        ranks: list[int] = []
        append = ranks.append
        for _ in range(count):
            u = draw()
            uz = u * zeta_n
            if uz < 1.0:
                append(0)
            elif uz < second:
                append(1)
            else:
                # Rounding can land exactly on `items` when u is within an ulp of 1.
                append(min(last, int(items * (eta * u - eta + 1.0) ** alpha)))
        return ranks
