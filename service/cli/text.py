"""Words of the command line's output."""

from __future__ import annotations


def plural(n: int, word: str, words: str | None = None) -> str:
    """`n` and `word` agreeing: `1 trial`, `2 trials`, `0 trials`; `words` where the plural is
    not `word` + s (`plural(n, "Optuna study", "studies")`: its last word)."""
    if n == 1:
        return f"{n} {word}"
    if words is None:
        return f"{n} {word}s"
    head, _, _ = word.rpartition(" ")
    return f"{n} {head} {words}" if head else f"{n} {words}"


__all__ = ["plural"]
