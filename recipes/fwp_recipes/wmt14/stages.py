"""``train``, ``evaluate`` and ``smoke``: the fairseq command lines of the recipe."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import List, Optional, Sequence

from .. import common
from ..common import RecipeError
from .paper import (BEAM, DEFAULT_CHECKPOINTS, DEFAULT_DATA, DEFAULT_RESULTS, LENPEN, MODELS, OUT,
                    PAPER_TOKENS_PER_GPU, PAPER_TOKENS_PER_UPDATE, SRC, TGT, TRAIN_FLAGS, get_model, update_freq)
from .prepare import check_prepared, prepare
from .results import RESULTS_HEADER, RESULTS_PREAMBLE, bleu_scores, read_generate
from .toy import write_fake_archives

# ---------------------------------------------------------------------------- train
def log(msg: str) -> None:
    common.log("wmt14", msg)


def _paths_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    p.add_argument("model", metavar="MODEL", help="one of: " + ", ".join(MODELS))
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"prepared data [{DEFAULT_DATA}]")
    p.add_argument("--save-dir", type=Path, help=f"checkpoints [{DEFAULT_CHECKPOINTS}/MODEL]")
    return p


def save_dir_of(a) -> Path:
    return (a.save_dir or DEFAULT_CHECKPOINTS / a.model).resolve()


def train_command(model: str, data: Path, save_dir: Path, extra: Sequence[str] = (),
                  precision: Optional[str] = None, workers: Optional[int] = None) -> List[str]:
    """The fairseq-train command of MODEL; ``extra`` comes last, so it overrides any default."""
    m = get_model(model)
    workers = common.world_size() if workers is None else workers
    cmd = common.fairseq_cmd("train", data / "bin", "--user-dir", common.USER_DIR, *TRAIN_FLAGS, *m.flags,
                             "--update-freq", update_freq(workers), "--save-dir", save_dir)
    cmd += common.precision_flags(precision) if workers > 0 else ["--cpu"]
    cmd += common.distributed_flags(workers)
    cmd += common.tensorboard_flags(save_dir / "tensorboard")
    return cmd + [str(x) for x in extra]


def train(argv: Sequence[str]) -> int:
    p = _paths_parser("train.sh", "Train one Table 1 model on WMT14 En-De; other flags go to fairseq-train.")
    p.add_argument("--precision", choices=common.PRECISIONS,
                   help="GPU precision (default bf16 if supported, else fp16 as the paper's V100s); ignored on CPU")
    p.add_argument("--dry-run", action="store_true", help="print the fairseq-train command and stop")
    p.add_argument("--fresh", action="store_true", help="delete this run's checkpoints and start over")
    a, extra = common.parse_known_args(p, argv)
    get_model(a.model)
    data = a.data.resolve()
    save = save_dir_of(a)
    cmd = train_command(a.model, data, save, extra, a.precision)
    workers = common.world_size()
    freq = update_freq(workers)
    log(f"{a.model}: {'CPU' if workers == 0 else f'{workers} GPU process(es)'} x "
        f"{PAPER_TOKENS_PER_GPU} tokens x update-freq {freq} = {max(1, workers) * PAPER_TOKENS_PER_GPU * freq:,} "
        f"tokens per update (paper: {PAPER_TOKENS_PER_UPDATE:,})")
    if a.dry_run:
        return common.dry_run(cmd, lambda: check_prepared(data), "wmt14")
    check_prepared(data)

    def write_recipe_json():
        if common.rank() == 0:
            (save / "recipe.json").write_text(json.dumps({"model": a.model, "data": str(data), "command": cmd},
                                                         indent=1))

    common.train_once(cmd, save, common.key_of(a.model, [str(x) for x in extra]), name=a.model, tag="wmt14",
                      fresh=a.fresh, before_run=write_recipe_json)
    return 0


def evaluate(argv: Sequence[str]) -> int:
    p = _paths_parser("evaluate.sh", "Beam search on valid and test, BLEU, and a row of results/wmt14.md.")
    p.add_argument("--checkpoint", type=Path, help="[SAVE_DIR/checkpoint_best.pt]")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help=f"results table [{DEFAULT_RESULTS}]")
    p.add_argument("--max-tokens", type=int, default=8000, help="fairseq-generate batch size in tokens [8000]")
    p.add_argument("--splits", default="valid,test", help="[valid,test]")
    a, extra = common.parse_known_args(p, argv)
    m = get_model(a.model)
    data = a.data.resolve()
    check_prepared(data)
    save = save_dir_of(a)
    ckpt = (a.checkpoint or save / "checkpoint_best.pt").resolve()
    if not ckpt.is_file() and a.checkpoint is None and (save / "checkpoint_last.pt").is_file():
        raise RecipeError(f"no {ckpt.name} in {save}, but a checkpoint_last.pt: training has not validated "
                          f"yet (see {save / 'train.log'}); evaluate that one with --checkpoint "
                          f"{save / 'checkpoint_last.pt'}, or train longer")
    if not ckpt.is_file():
        raise RecipeError(f"no checkpoint {ckpt}; train first: recipes/wmt14_en_de/train.sh {a.model}"
                          + (f" --save-dir {a.save_dir}" if a.save_dir else ""))
    splits = [s for s in a.splits.split(",") if s]
    for s in splits:
        common.check_choice("split", s, ("valid", "test"))
    out_dir = save / "eval"
    scores = {}
    for split in splits:
        results_path = out_dir / split
        cmd = common.fairseq_cmd(
            "generate", data / "bin", "--user-dir", common.USER_DIR, "--task", "translation",
            "--source-lang", SRC, "--target-lang", TGT, "--path", ckpt, "--gen-subset", split,
            "--beam", BEAM, "--lenpen", LENPEN, "--remove-bpe", "sentencepiece", "--max-tokens", a.max_tokens,
            # fairseq 0.12.3's batch_by_size drops a last batch smaller than this multiple
            # (default 8): up to 7 test sentences would go untranslated
            "--required-batch-size-multiple", "1",
            "--results-path", results_path, *(["--cpu"] if common.world_size() == 0 else []), *extra)
        common.run(cmd, log=out_dir / "generate.log")
        refs_raw = (data / "ref" / f"{split}.{TGT}").read_text(encoding="utf-8").splitlines()
        refs_tok = (data / "ref" / f"{split}.tok.{TGT}").read_text(encoding="utf-8").splitlines()
        gen = results_path / f"generate-{split}.txt"
        hyps = read_generate(gen, len(refs_raw), "H")
        s = bleu_scores(hyps, refs_tok, refs_raw, targets=read_generate(gen, len(refs_raw), "T"))
        (results_path / f"hyp.detok.{TGT}").write_text("".join(h + "\n" for h in s.pop("detok")), encoding="utf-8")
        scores[split] = s
        print(f"[wmt14] {a.model} {split}: tokenised BLEU with compound splitting {s['tok_bleu_t2t']:.2f} "
              f"(t2t get_ende_bleu.sh), {s['tok_bleu_fairseq']:.2f} (fairseq compound_split_bleu.sh); "
              f"sacreBLEU {s['sacrebleu']:.2f} ({s['signature']})", flush=True)
    (out_dir / "bleu.json").write_text(json.dumps({"model": a.model, "checkpoint": str(ckpt), **scores}, indent=1))

    def ours(split):
        if split not in scores:
            return "-"
        x = scores[split]
        return f"{x['tok_bleu_t2t']:.1f} / {x['tok_bleu_fairseq']:.1f} / {x['sacrebleu']:.1f}"

    def paper(x):
        return "-" if x is None else f"{x:.1f}"

    sig = next(iter(scores.values()))["signature"].replace("|", "\\|") if scores else "-"  # Markdown cell
    row = [m.name, m.column, m.d_dot, "-" if m.rule == "softmax" else m.rule, paper(m.paper_valid), ours("valid"), paper(m.paper_test), ours("test"),
           os.path.relpath(ckpt, common.REPO) if str(ckpt).startswith(str(common.REPO)) else str(ckpt), sig]
    common.results_table(a.results, RESULTS_HEADER, (m.name,), row, preamble=RESULTS_PREAMBLE)
    log(f"row for {m.name} written to {a.results}")
    return 0


# ---------------------------------------------------------------------------- smoke
SMOKE_ARCH = ["--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "64",
              "--decoder-embed-dim", "64", "--encoder-ffn-embed-dim", "128", "--decoder-ffn-embed-dim", "128",
              "--encoder-attention-heads", "4", "--decoder-attention-heads", "4", "--dropout", "0.0"]
SMOKE_OPT = ["--max-tokens", "1000", "--update-freq", "1", "--lr", "3e-3", "--warmup-updates", "100",
             "--clip-norm", "1.0", "--log-interval", "20", "--num-workers", "0",
             # fairseq's --eval-bleu logs no "bleu" while every hypothesis is empty (an
             # untrained model) and validate() then fails with KeyError: 'bleu'
             "--validate-after-updates", "100"]


def smoke(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="smoke.sh", description="prepare -> train -> evaluate on generated data, CPU.",
                                allow_abbrev=False)
    p.add_argument("--out", type=Path, default=OUT / "smoke", help=f"everything goes here [{OUT / 'smoke'}]")
    p.add_argument("--models", default="transformer,linear,delta", help="[transformer,linear,delta]")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--train-pairs", type=int, default=2000)
    p.add_argument("--jobs", type=int, default=0, help="models trained at once [one per CPU core]")
    a = common.parse_args(p, argv)
    models = [x for x in a.models.split(",") if x]
    for x in models:
        get_model(x)
    out = a.out.resolve()
    t0 = time.time()
    counts = write_fake_archives(out / "raw", train_pairs=a.train_pairs)
    data = out / "data"
    prepare(["--raw", str(out / "raw"), "--data", str(data), "--workers", "1", "--bpe-size", "120",
             "--expect", f"{counts['valid']},{counts['test']}"])
    results = out / "results.md"
    common.smoke_on_cpu()
    common.run_all(lambda x: train([x, "--data", str(data), "--save-dir", str(out / "checkpoints" / x), *SMOKE_ARCH,
                                    *SMOKE_OPT, "--max-epoch", str(a.epochs)]), models, a.jobs)
    for x in models:
        evaluate([x, "--data", str(data), "--save-dir", str(out / "checkpoints" / x), "--results", str(results)])
    print(results.read_text())
    for x in models:
        b = json.loads((out / "checkpoints" / x / "eval" / "bleu.json").read_text())
        t = b["test"]
        print(f"smoke BLEU {x}: test t2t {t['tok_bleu_t2t']:.2f} fairseq {t['tok_bleu_fairseq']:.2f} "
              f"sacre {t['sacrebleu']:.2f}")
    print(f"smoke done in {time.time() - t0:.0f}s; outputs in {out}")
    return 0
