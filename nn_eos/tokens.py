"""Token sequences a small transformer learns with nothing downloaded: modular addition and characters of text.

Both return ``(X, y)``: X (n, T) int64 token ids, y (n, T) int64 the token each position is to predict, so that
the token-level cross-entropy (criteria.py) is the mean over all n·T positions. The vocabulary is 0..V−1 with
V = ``vocabulary_size(X, y)``.
"""

import numpy as np

from .validation import check_integer

WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen").split()


def modular_addition(modulus=11, split="train", train_fraction=0.5, seed=0):
    """Every sum ``a + b mod p`` as a sequence ``x = (a, b, =)`` → ``y = (a, b, c)``, c = (a + b) mod p.

    Tokens 0..p−1 are the numbers and p is "=" (V = p + 1). The first two positions echo their own token, which a
    causal model can always do, so that the loss can go to 0; the third is the sum. The p² pairs are shuffled by
    ``seed`` and split: 'train' the first ``train_fraction`` of them, 'test' the rest, 'all' every pair.
    """
    p = check_integer(modulus, "modulus", low=2)
    if not 0 < float(train_fraction) <= 1:
        raise ValueError(f"train_fraction must lie in (0, 1], got {train_fraction}")
    a, b = (grid.ravel() for grid in np.meshgrid(np.arange(p), np.arange(p), indexing="ij"))
    order = np.random.default_rng(seed).permutation(p * p)
    cut = max(1, int(round(train_fraction * p * p)))
    splits = {"train": order[:cut], "test": order[cut:], "all": np.arange(p * p)}
    if split not in splits:
        raise ValueError(f"unknown split {split!r}; expected 'train', 'test' or 'all'")
    chosen = splits[split]
    if len(chosen) == 0:
        raise ValueError(f"split 'test' is empty with train_fraction = {train_fraction}")
    a, b = a[chosen], b[chosen]
    X = np.stack([a, b, np.full_like(a, p)], axis=1)
    y = np.stack([a, b, (a + b) % p], axis=1)
    return X.astype(np.int64), y.astype(np.int64)


def arithmetic_text(sentences=400, seed=0):
    """English sentences of sums in words, ``"three plus four is seven. "``, a, b in 0..9, in an order drawn from
    ``seed``: text with structure a character model can learn, generated here (no file, no licence)."""
    rng = np.random.default_rng(seed)
    pairs = rng.integers(0, 10, size=(sentences, 2))
    return "".join(f"{WORDS[a]} plus {WORDS[b]} is {WORDS[a + b]}. " for a, b in pairs)


def characters(n=512, length=16, text=None, seed=0):
    """Windows of a text as next-character prediction: ``x = text[i : i + T]``, ``y = text[i + 1 : i + T + 1]``,
    T = ``length``, at n starts drawn from ``seed`` (all starts when n is None or more than there are).

    ``text``: a string (default :func:`arithmetic_text`). Token ids are the characters' ranks in the sorted set of
    the text's characters (:func:`alphabet`). The first positions see little context, so the loss has a floor
    above 0: train for steps, not to a target loss.
    """
    text = arithmetic_text() if text is None else str(text)
    T = check_integer(length, "length")
    starts = len(text) - T
    if starts < 1:
        raise ValueError(f"the text has {len(text)} characters, too few for windows of length {T} and their targets")
    letters = alphabet(text)
    ids = np.searchsorted(np.array(list(letters)), np.array(list(text)))
    chosen = np.arange(starts)
    if n is not None and check_integer(n, "n") < starts:
        chosen = np.sort(np.random.default_rng(seed).choice(starts, size=n, replace=False))
    window = chosen[:, None] + np.arange(T)
    return ids[window].astype(np.int64), ids[window + 1].astype(np.int64)


def alphabet(text):
    """The sorted characters of a text: token id i is ``alphabet(text)[i]``."""
    return "".join(sorted(set(text)))


def vocabulary_size(X, y):
    """V, the tokens a model of (X, y) needs: one more than the largest id in inputs or targets."""
    return int(max(np.max(X), np.max(y))) + 1
