"""The pure core: every protocol decision of dynastore, with no I/O.

Nothing in this package may import asyncio, socket, selectors, threading or time, use module-level
`random`, or call the builtin `hash()` (its value changes between processes). Time arrives as
`now_ms` arguments, randomness as an injected `random.Random`, storage as a synchronous engine.
"""
