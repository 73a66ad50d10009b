"""Tiny synthetic corpora for the demo (``scripts/demo.sh``) and the CLI tests.

Two generators, both deterministic for a given seed and written as plain
whitespace-tokenised text, ready for ``fairseq-preprocess``:

* :func:`write_translation_corpus` -- a "translation" task between two small
  vocabularies: the target is the source sequence (optionally reversed) with every
  source word mapped to its target-language counterpart. Files
  ``{train,valid,test}.{src,tgt}``.
* :func:`write_lm_corpus` -- sentences from a small probabilistic grammar with
  number agreement (singular subject -> singular verb), so a language model can do
  much better than the uniform distribution over the vocabulary. Files
  ``{train,valid,test}.txt``.
* :func:`write_episode_corpus` -- long-range structure for carried-state language
  modelling (paper Table 4): a stream of episodes (one per line), each drawing its
  tokens from its own random subset of the vocabulary. Which tokens an episode uses is
  only known from the episode so far, which is longer than a training segment, so a
  model whose memory spans segments -- and forgets the previous episode at the line
  break -- predicts better than a sliding window. Files ``{train,valid,test}.txt``.

Command line (used by the demo)::

    python -m fairseq_fwp.data.toy_data translation OUT_DIR [--task reverse] [--seed 1]
    python -m fairseq_fwp.data.toy_data lm OUT_DIR [--seed 1]
    python -m fairseq_fwp.data.toy_data episodes OUT_DIR [--seed 1]

This module imports nothing from fairseq or torch.
"""

from __future__ import annotations

import argparse
import os
import random
from typing import Dict, List, Sequence, Tuple

__all__ = [
    "translation_pairs",
    "write_translation_corpus",
    "lm_sentences",
    "write_lm_corpus",
    "LM_VOCAB",
    "episode_lines",
    "write_episode_corpus",
]

SPLITS = ("train", "valid", "test")


# --------------------------------------------------------------------------- translation


def _translation_vocab(vocab_size: int) -> Tuple[List[str], List[str]]:
    src = [f"s{i}" for i in range(vocab_size)]
    tgt = [f"t{i}" for i in range(vocab_size)]
    return src, tgt


def translation_pairs(
    n: int,
    task: str = "reverse",
    vocab_size: int = 16,
    min_len: int = 3,
    max_len: int = 10,
    seed: int = 0,
) -> List[Tuple[str, str]]:
    """``n`` (source, target) sentence pairs.

    task ``copy``: target word i translates source word i; ``reverse``: the
    translated sequence is reversed. Word ``s{j}`` translates to ``t{(j*7+3) % V}``
    (a fixed permutation when gcd(7, V) == 1), so the model must learn a lexicon
    as well as the alignment.
    """
    if task not in ("copy", "reverse"):
        raise ValueError(f"unknown task {task!r} (copy or reverse)")
    if not 1 <= min_len <= max_len:
        raise ValueError("need 1 <= min_len <= max_len")
    src_vocab, tgt_vocab = _translation_vocab(vocab_size)
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        length = rng.randint(min_len, max_len)
        ids = [rng.randrange(vocab_size) for _ in range(length)]
        out = [(j * 7 + 3) % vocab_size for j in ids]
        if task == "reverse":
            out = out[::-1]
        pairs.append((" ".join(src_vocab[j] for j in ids), " ".join(tgt_vocab[j] for j in out)))
    return pairs


def write_translation_corpus(
    out_dir: str,
    task: str = "reverse",
    sizes: Sequence[int] = (4000, 200, 200),
    vocab_size: int = 16,
    min_len: int = 3,
    max_len: int = 10,
    seed: int = 1,
    src: str = "src",
    tgt: str = "tgt",
) -> Dict[str, Tuple[str, str]]:
    """Write ``{split}.{src}`` / ``{split}.{tgt}`` for train/valid/test into ``out_dir``.

    Returns ``{split: (src_path, tgt_path)}``. Splits use different seeds, so they
    are (almost surely) disjoint.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for k, (split, n) in enumerate(zip(SPLITS, sizes)):
        pairs = translation_pairs(n, task, vocab_size, min_len, max_len, seed=seed * 1000 + k)
        sp, tp = (os.path.join(out_dir, f"{split}.{lang}") for lang in (src, tgt))
        with open(sp, "w") as fs, open(tp, "w") as ft:
            for s, t in pairs:
                fs.write(s + "\n")
                ft.write(t + "\n")
        paths[split] = (sp, tp)
    return paths


# --------------------------------------------------------------------------- language model

_DET = {"sg": ["the", "a", "one"], "pl": ["the", "two", "some"]}
_NOUN = {
    "sg": ["cat", "dog", "bird", "child", "robot", "teacher"],
    "pl": ["cats", "dogs", "birds", "children", "robots", "teachers"],
}
_VERB_T = {"sg": ["sees", "likes", "follows", "helps"], "pl": ["see", "like", "follow", "help"]}
_VERB_I = {"sg": ["sleeps", "runs", "sings"], "pl": ["sleep", "run", "sing"]}
_ADJ = ["small", "big", "red", "happy"]
_PREP = ["near", "behind", "with"]
_CONJ = ["and", "but"]

LM_VOCAB = sorted(
    {w for d in (_DET, _NOUN, _VERB_T, _VERB_I) for ws in d.values() for w in ws}
    | set(_ADJ)
    | set(_PREP)
    | set(_CONJ)
    | {"."}
)


def _np(rng: random.Random, depth: int = 0) -> Tuple[List[str], str]:
    num = rng.choice(("sg", "pl"))
    words = [rng.choice(_DET[num])]
    if rng.random() < 0.3:
        words.append(rng.choice(_ADJ))
    words.append(rng.choice(_NOUN[num]))
    if depth == 0 and rng.random() < 0.2:
        words += [rng.choice(_PREP)] + _np(rng, depth + 1)[0]
    return words, num


def _clause(rng: random.Random) -> List[str]:
    subj, num = _np(rng)
    if rng.random() < 0.6:
        return subj + [rng.choice(_VERB_T[num])] + _np(rng)[0]
    return subj + [rng.choice(_VERB_I[num])]


def lm_sentences(n: int, seed: int = 0) -> List[str]:
    """``n`` sentences from the toy grammar (subject-verb number agreement, PPs, 'and')."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = _clause(rng)
        if rng.random() < 0.25:
            words += [rng.choice(_CONJ)] + _clause(rng)
        out.append(" ".join(words + ["."]))
    return out


def write_lm_corpus(
    out_dir: str, sizes: Sequence[int] = (6000, 300, 300), seed: int = 1
) -> Dict[str, str]:
    """Write ``{train,valid,test}.txt`` (one sentence per line); returns ``{split: path}``."""
    return _write_text_splits(out_dir, sizes, seed, lm_sentences)


def _write_text_splits(out_dir: str, sizes: Sequence[int], seed: int, lines_of) -> Dict[str, str]:
    """Write ``{split}.txt`` with ``lines_of(size, seed=...)`` for each split (seed per split)."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for k, (split, n) in enumerate(zip(SPLITS, sizes)):
        path = os.path.join(out_dir, f"{split}.txt")
        with open(path, "w") as f:
            for line in lines_of(n, seed=seed * 1000 + k):
                f.write(line + "\n")
        paths[split] = path
    return paths


# --------------------------------------------------------------------------- episodes (long range)


def episode_lines(
    n_tokens: int,
    vocab_size: int = 128,
    set_size: int = 16,
    min_len: int = 96,
    max_len: int = 160,
    seed: int = 0,
) -> List[str]:
    """Episodes with about ``n_tokens`` tokens in all, one per line.

    Each episode has a uniform random length in [min_len, max_len] and draws its words
    i.i.d. uniformly from its own random subset of ``set_size`` of the ``vocab_size``
    words ``e0 ... e{V-1}``. The Bayes-optimal predictor knows which words the episode
    has used so far: a seen word has probability 1/set_size, the rest of the mass is
    spread over the unseen words. Its perplexity therefore drops with the length of
    the context within the episode (for the defaults, about 31 with the last 32 tokens
    as context and 23 with the whole episode; uniform = 128).
    """
    if not 1 <= set_size <= vocab_size:
        raise ValueError("need 1 <= set_size <= vocab_size")
    if not 1 <= min_len <= max_len:
        raise ValueError("need 1 <= min_len <= max_len")
    rng = random.Random(seed)
    words = [f"e{i}" for i in range(vocab_size)]
    lines, total = [], 0
    while total < n_tokens:
        subset = rng.sample(words, set_size)
        length = rng.randint(min_len, max_len)
        lines.append(" ".join(rng.choice(subset) for _ in range(length)))
        total += length + 1  # + </s>
    return lines


def write_episode_corpus(
    out_dir: str,
    sizes: Sequence[int] = (200_000, 20_000, 20_000),
    seed: int = 1,
    **kwargs,
) -> Dict[str, str]:
    """Write ``{train,valid,test}.txt`` of :func:`episode_lines` (sizes in tokens)."""
    return _write_text_splits(out_dir, sizes, seed, lambda n, seed: episode_lines(n, seed=seed, **kwargs))


# --------------------------------------------------------------------------- CLI


def _sizes(text: str) -> Tuple[int, int, int]:
    parts = [int(x) for x in text.split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("expected TRAIN,VALID,TEST")
    return tuple(parts)  # type: ignore[return-value]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="kind", required=True)
    t = sub.add_parser("translation", help="source/target pairs (copy or reverse)")
    t.add_argument("out_dir")
    t.add_argument("--task", default="reverse", choices=("copy", "reverse"))
    t.add_argument("--sizes", type=_sizes, default=(4000, 200, 200), help="TRAIN,VALID,TEST")
    t.add_argument("--vocab-size", type=int, default=16)
    t.add_argument("--min-len", type=int, default=3)
    t.add_argument("--max-len", type=int, default=10)
    t.add_argument("--seed", type=int, default=1)
    lm = sub.add_parser("lm", help="sentences from a small grammar")
    lm.add_argument("out_dir")
    lm.add_argument("--sizes", type=_sizes, default=(6000, 300, 300), help="TRAIN,VALID,TEST")
    lm.add_argument("--seed", type=int, default=1)
    ep = sub.add_parser("episodes", help="episodes with their own word subsets (long-range structure)")
    ep.add_argument("out_dir")
    ep.add_argument("--sizes", type=_sizes, default=(200_000, 20_000, 20_000), help="TRAIN,VALID,TEST tokens")
    ep.add_argument("--vocab-size", type=int, default=128)
    ep.add_argument("--set-size", type=int, default=16)
    ep.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    if a.kind == "translation":
        write_translation_corpus(
            a.out_dir, a.task, a.sizes, a.vocab_size, a.min_len, a.max_len, a.seed
        )
    elif a.kind == "episodes":
        write_episode_corpus(a.out_dir, a.sizes, a.seed, vocab_size=a.vocab_size, set_size=a.set_size)
    else:
        write_lm_corpus(a.out_dir, a.sizes, a.seed)


if __name__ == "__main__":
    main()
