"""A generated corpus in WikiText-103's layout (``toy``) and the ``smoke`` run over it."""

from __future__ import annotations

import random
import time
import zipfile
from pathlib import Path
from typing import Sequence, Tuple

from .. import common
from .args import make_parser
from .data import SPLITS, TOKEN_FILES, ZIP_DIR, ZIP_NAME, data_info, prepare
from .evaluate import evaluate
from .train import train

# -------------------------------------------------------------------- toy corpus


def toy_articles(n_articles: int, seed: int, sentences: Tuple[int, int] = (8, 30)) -> str:
    """Text laid out like WikiText-103's token files: ' = Title = ' headings, ' = = Section
    = = ' subheadings, paragraphs of sentences from fairseq_fwp.data.toy_data's grammar, blank
    lines between, every line starting with a space."""
    from fairseq_fwp.data.toy_data import lm_sentences

    rng = random.Random(seed)
    out = [" \n"]
    for a in range(n_articles):
        out += [f" = {rng.choice(['the', 'a'])} {rng.choice(['cat', 'dog', 'robot', 'bird'])} = \n", " \n"]
        for para in range(rng.randint(2, 4)):
            if para:
                out += [f" = = {rng.choice(['big', 'red', 'small'])} = = \n", " \n"]
            n = rng.randint(*sentences)
            out += [" " + " ".join(lm_sentences(n, seed=seed * 100_003 + a * 10 + para)) + " \n", " \n"]
    return "".join(out)


def write_toy_raw(out: Path, kind: str = "zip", articles=(60, 6, 6), seed: int = 1) -> Path:
    """A small generated corpus in WikiText-103's layout: ``out/wikitext-103-v1.zip``
    (kind 'zip', members wikitext-103/wiki.*.tokens) or ``out/wiki.*.tokens`` ('files')."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    texts = {s: toy_articles(n, seed * 10 + k) for k, (s, n) in enumerate(zip(SPLITS, articles))}
    if kind == "files":
        for s, text in texts.items():
            (out / TOKEN_FILES[s]).write_text(text)
        return out
    path = out / ZIP_NAME
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for s, text in texts.items():
            z.writestr(f"{ZIP_DIR}/{TOKEN_FILES[s]}", text)
    return path


def toy(argv: Sequence[str]) -> int:
    p = make_parser("launch.py wikitext103 toy", "Write a small generated corpus in WikiText-103's layout.")
    p.add_argument("out", type=Path)
    p.add_argument("--files", action="store_true", help="three loose wiki.*.tokens files instead of the zip")
    p.add_argument("--articles", default="60,6,6", help="TRAIN,VALID,TEST articles")
    p.add_argument("--seed", type=int, default=1)
    a = common.parse_args(p, argv)
    sizes = tuple(int(x) for x in a.articles.split(","))
    print(write_toy_raw(a.out, "files" if a.files else "zip", sizes, a.seed))
    return 0


# -------------------------------------------------------------------------- smoke

SMOKE_RUNS = (("transformer",), ("delta",), ("delta", "--carry"))


def smoke(argv: Sequence[str]) -> int:
    p = make_parser("smoke.sh", "Every stage at CPU scale: generated --raw archive, prepare, train "
                "(transformer, delta, delta --carry; config 'tiny'), evaluate in both modes, results table.")
    p.add_argument("--out", type=Path, default=common.REPO / "outputs" / "wikitext103-smoke")
    p.add_argument("--max-update", type=int, default=None, help="updates per model (default: the tiny config's)")
    p.add_argument("--jobs", type=int, default=0, help="models trained at once (default one per CPU core)")
    a = common.parse_args(p, argv)
    out = a.out.resolve()
    t0 = time.time()
    archive = write_toy_raw(out / "archive")
    common.smoke_on_cpu()
    prepare(["--raw", str(archive), "--workdir", str(out), "--workers", "1"])
    results = out / "results.md"
    extra = [] if a.max_update is None else ["--max-update", str(a.max_update)]
    common.run_all(lambda run: train(["tiny", *run, "--workdir", str(out), *extra]), SMOKE_RUNS, a.jobs)
    for run in SMOKE_RUNS:
        evaluate(["tiny", *run, "--workdir", str(out), "--results", str(results)])
    print(results.read_text())
    vocab = data_info(out / "data-bin")["vocab"]
    print(f"SMOKE done in {time.time() - t0:.0f} s; uniform-vocabulary perplexity {vocab}; results: {results}")
    return 0
