"""`python -m dynastore.sim --seed S` replays one run and prints its trace; `--seeds A..B` sweeps.

Exit status 0 when every run passed; 1 otherwise, with each failing seed printed so it can be replayed.
"""

from __future__ import annotations

import argparse
import sys
import time

from dynastore.sim.run import Options, run_seed


def _seed_range(text: str) -> range:
    start, sep, end = text.partition("..")
    if not sep or not start.isdigit() or not end.isdigit() or int(end) < int(start):
        raise argparse.ArgumentTypeError("--seeds takes A..B with A <= B")
    return range(int(start), int(end) + 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dynastore.sim", description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--seed", type=int, help="replay one seed and print its trace")
    which.add_argument("--seeds", type=_seed_range, help="sweep seeds A..B")
    parser.add_argument("--safety-ms", type=int, default=12_000)
    parser.add_argument("--lww", action="store_true", help="use last-write-wins buckets (the checker must find losses)")
    parser.add_argument(
        "--no-allow-mult",
        dest="allow_mult",
        action="store_false",
        help="use allow_mult=false buckets, one value per key (the checker must find losses)",
    )
    parser.add_argument(
        "--speculative-retry",
        default="none",
        metavar="POLICY",
        help="the buckets' speculative_retry: none, 99p, 20ms, ... (reads ask R replicas first)",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--quiet", action="store_true", help="with --seed: no trace")
    args = parser.parse_args(argv)
    settings = {}
    for pair in args.overrides:
        name, _, value = pair.partition("=")
        settings[name] = value
    if args.seed is not None:
        result = run_seed(
            args.seed,
            Options(
                safety_ms=args.safety_ms,
                lww=args.lww,
                allow_mult=args.allow_mult,
                speculative_retry=args.speculative_retry,
                settings=settings,
                trace=not args.quiet,
            ),
        )
        for line in result.trace:
            print(line)
        print(result.summary())
        return 0 if result.ok else 1
    failed = []
    started = time.monotonic()
    for seed in args.seeds:
        result = run_seed(
            seed,
            Options(
                safety_ms=args.safety_ms,
                lww=args.lww,
                allow_mult=args.allow_mult,
                speculative_retry=args.speculative_retry,
                settings=settings,
            ),
        )
        if not result.ok:
            failed.append(seed)
            print(result.summary(), flush=True)
    elapsed = time.monotonic() - started
    print(
        f"{len(args.seeds) - len(failed)}/{len(args.seeds)} seeds passed in {elapsed:.1f} s"
        + (f"; failing seeds: {' '.join(map(str, failed))}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
