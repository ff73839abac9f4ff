"""Checkers over operation histories, shared by the simulator and the real-process fault suite.

A history records every client operation as invoked, then completed as ok, fail (certainly not
applied) or unknown (may or may not have been applied: timeouts and most failures of writes).

- The *set* checker (after Jepsen's): clients add unique elements to a few sets by read-modify-write,
  merging siblings. After healing, every set is read once. Lost = acknowledged but absent; unexpected =
  present but never attempted; unknown adds may be either way.
- The *register* checker: clients write unique values to independent keys, each with the context of
  an earlier read of that key. An acknowledged write must be among the final siblings, unless the
  context given with some other attempted write (acknowledged or unknown) covered it: only a write
  that saw it may replace it.

Pure: histories in, verdicts out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from dynastore.core.versions import Context, Dot

OK, FAIL, UNKNOWN = "ok", "fail", "unknown"


@dataclass
class SetOp:
    set_key: str
    element: int
    outcome: str = UNKNOWN


@dataclass
class SetVerdict:
    attempted: int
    acknowledged: int
    unknown: int
    failed: int
    lost: list[int] = field(default_factory=list)
    unexpected: list[int] = field(default_factory=list)
    recovered_unknown: int = 0

    @property
    def ok(self) -> bool:
        return not self.lost and not self.unexpected


def check_sets(ops: Iterable[SetOp], final: dict[str, set[int]]) -> SetVerdict:
    ops = list(ops)
    attempted = {(op.set_key, op.element) for op in ops}
    acked = {(op.set_key, op.element) for op in ops if op.outcome == OK}
    unknown = {(op.set_key, op.element) for op in ops if op.outcome == UNKNOWN}
    present = {(key, element) for key, elements in final.items() for element in elements}
    verdict = SetVerdict(
        attempted=len(attempted),
        acknowledged=len(acked),
        unknown=len(unknown),
        failed=sum(1 for op in ops if op.outcome == FAIL),
    )
    verdict.lost = sorted(element for key, element in acked - present)
    verdict.unexpected = sorted(element for key, element in present - attempted)
    verdict.recovered_unknown = len(unknown & present)
    return verdict


@dataclass
class RegisterWrite:
    key: str
    value: bytes
    given: Context
    outcome: str = UNKNOWN
    dot: Dot | None = None  # known once acknowledged (the context a write returns names its dot)


@dataclass
class RegisterVerdict:
    acknowledged: int
    unknown: int
    lost: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.lost and not self.unexpected


def check_registers(writes: Iterable[RegisterWrite], final: dict[str, list[tuple[Dot, bytes]]]) -> RegisterVerdict:
    writes = list(writes)
    verdict = RegisterVerdict(
        acknowledged=sum(1 for w in writes if w.outcome == OK),
        unknown=sum(1 for w in writes if w.outcome == UNKNOWN),
    )
    attempted_values = {(w.key, w.value) for w in writes}
    for key, siblings in final.items():
        for _, value in siblings:
            if (key, value) not in attempted_values:
                verdict.unexpected.append(f"{key}={value!r}")
    for w in writes:
        if w.outcome != OK or w.dot is None:
            continue
        survivors = {dot for dot, _ in final.get(w.key, [])}
        if w.dot in survivors:
            continue
        replaced = any(
            other is not w and other.key == w.key and other.outcome != FAIL and other.given.covers(w.dot)
            for other in writes
        )
        if not replaced:
            verdict.lost.append(f"{w.key}={w.value!r}")
    return verdict
