"""fairseq-fwp demo: toy translation + toy language modelling with three attentions.

Run through ``bash scripts/demo.sh`` (which sets up the environment first, then runs
``recipes/launch.py demo run``). Stages:

1. data        synthetic corpora (fairseq_fwp.data.toy_data): "translation" = reverse the
               sentence and map every word through a fixed lexicon; LM = sentences
               of a small agreement grammar
2. preprocess  fairseq-preprocess (joined dictionary for translation)
3. mt-train    fairseq-train arch fwp_transformer, tiny sizes, --cpu, for
               linear (Linear Transformer: sum rule + attention normalisation),
               delta (Delta Net: delta rule + sum normalisation) and softmax (baseline)
4. mt-eval     fairseq-generate with beam search + sacreBLEU on the test split
5. lm-train    fairseq-train arch fwp_lm, same three attentions
6. lm-eval     fairseq-eval-lm perplexity on the test split

Outputs go to ``outputs/demo/`` (``--out``): one folder per run with its command,
full fairseq log and results; ``summary.md`` at the end. Every stage is marked done
(``.steps/``, as every recipe step), so re-running skips finished work; an interrupted
training run resumes from its ``checkpoint_last.pt``. ``--fresh`` starts over. fairseq
runs through the recipes' one runner (``fwp_recipes.common``): its output goes to the
run's log, with a progress line every 15 s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import sys
import time
from typing import Dict, List, Optional

from fairseq_fwp import presets
from fairseq_fwp.data import toy_data

from . import common

ROOT = str(common.REPO)
USER_DIR = common.USER_DIR
PY = sys.executable

# name: (label, fwp flags): the Linear Transformer (sum rule, attention normalisation), Delta
# Net (delta rule, sum normalisation) and the softmax baseline of fairseq_fwp.presets
ATTENTIONS = {name: (presets.PRESETS[preset].label, presets.preset(preset))
              for name, preset in (("linear", "linear"), ("delta", "delta"), ("softmax", "softmax"))}

T0 = time.time()


def banner(text: str) -> None:
    print(f"\n=== [{time.time() - T0:6.0f}s] {text} ===", flush=True)


def info(text: str) -> None:
    print(f"    {text}", flush=True)


_PROGRESS = re.compile(r"\| (train_inner|train|valid) \| epoch (\d+)")


def progress(line: str) -> Optional[str]:
    """A short status for a fairseq training/validation line (None for other lines)."""
    m = _PROGRESS.search(line)
    if not m:
        return None
    stats = dict(re.findall(r"\b(loss|ppl|num_updates|bleu)[ =]([0-9.]+)", line))
    kind = {"train_inner": "train", "train": "train (epoch)", "valid": "valid"}[m.group(1)]
    return f"epoch {int(m.group(2))} {kind}: " + ", ".join(f"{k} {v}" for k, v in stats.items())


def run_logged(cmd: List[str], log_path: str) -> None:
    """Run a fairseq CLI: full output to ``log_path``, a short progress line every 15 s."""
    # Tiny models: one intra-op thread is as fast as two and avoids the huge slow-down
    # of spinning OpenMP threads when the cores are shared. Override by exporting it.
    env = {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.time()
    common.run(cmd, log=log_path, env=env, cwd=ROOT, echo=False, progress=progress)
    info(f"finished in {time.time() - start:.0f}s (full log: {os.path.relpath(log_path, ROOT)})")


def fairseq(module: str) -> List[str]:
    return common.fairseq_cmd(module)


# ----------------------------------------------------------------------------- stages


def stage_data(out: str, a) -> Dict[str, str]:
    raw_mt, raw_lm = os.path.join(out, "data", "mt_raw"), os.path.join(out, "data", "lm_raw")
    bin_mt, bin_lm = os.path.join(out, "data", "mt_bin"), os.path.join(out, "data", "lm_bin")
    banner("1/6 data: synthetic corpora")
    steps = common.Steps(os.path.join(out, "data"))
    key = common.key_of(a.mt_train, a.lm_train)
    raw_files = ([os.path.join(raw_mt, f"{s}.{side}") for s in ("train", "valid", "test") for side in ("src", "tgt")]
                 + [os.path.join(raw_lm, f"{s}.txt") for s in ("train", "valid", "test")])
    if steps.done("corpora", key, raw_files):
        info("already done")
    else:
        toy_data.write_translation_corpus(raw_mt, task="reverse", sizes=(a.mt_train, 200, 200), vocab_size=16,
                                          min_len=3, max_len=10, seed=1)
        toy_data.write_lm_corpus(raw_lm, sizes=(a.lm_train, 400, 400), seed=1)
        steps.mark("corpora", key, raw_files)
        with open(os.path.join(raw_mt, "test.src")) as fs, open(os.path.join(raw_mt, "test.tgt")) as ft:
            info(f"translation example:  {fs.readline().strip()}  ->  {ft.readline().strip()}")
        with open(os.path.join(raw_lm, "test.txt")) as f:
            info(f"LM example:           {f.readline().strip()}")
    banner("2/6 preprocess: fairseq-preprocess")
    for name, dest, flags in (
        ("translation", bin_mt, ["--source-lang", "src", "--target-lang", "tgt", "--joined-dictionary",
                                 "--trainpref", f"{raw_mt}/train", "--validpref", f"{raw_mt}/valid",
                                 "--testpref", f"{raw_mt}/test"]),
        ("language model", bin_lm, ["--only-source", "--trainpref", f"{raw_lm}/train.txt",
                                    "--validpref", f"{raw_lm}/valid.txt", "--testpref", f"{raw_lm}/test.txt"]),
    ):
        outputs = [os.path.join(dest, "preprocess.log")]
        if steps.done(os.path.basename(dest), key, outputs):
            info(f"{name}: already done")
            continue
        shutil.rmtree(dest, ignore_errors=True)
        os.makedirs(dest)
        run_logged(fairseq("preprocess") + [*flags, "--destdir", dest, "--workers", "1"], outputs[0])
        steps.mark(os.path.basename(dest), key, outputs)
    return {"mt": bin_mt, "lm": bin_lm, "raw_mt": raw_mt}


def mt_train_cmd(data: str, save_dir: str, flags: List[str], epochs: int) -> List[str]:
    return fairseq("train") + [
        data, "--user-dir", USER_DIR, "--task", "translation", "--arch", "fwp_transformer", *flags,
        "--encoder-layers", "2", "--decoder-layers", "2",
        "--encoder-embed-dim", "64", "--decoder-embed-dim", "64",
        "--encoder-ffn-embed-dim", "128", "--decoder-ffn-embed-dim", "128",
        "--encoder-attention-heads", "4", "--decoder-attention-heads", "4",
        "--share-all-embeddings", "--dropout", "0.0",
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", "3e-3",
        "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "100", "--clip-norm", "1.0",
        "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
        "--max-tokens", "800", "--max-epoch", str(epochs),
        "--save-dir", save_dir, "--no-epoch-checkpoints", "--cpu", "--seed", "1", "--num-workers", "0",
        "--log-format", "simple", "--log-interval", "50",
    ]


def lm_train_cmd(data: str, save_dir: str, flags: List[str], epochs: int) -> List[str]:
    return fairseq("train") + [
        data, "--user-dir", USER_DIR, "--task", "language_modeling", "--arch", "fwp_lm", *flags,
        "--decoder-layers", "2", "--decoder-embed-dim", "64", "--decoder-ffn-embed-dim", "128",
        "--decoder-attention-heads", "4", "--tokens-per-sample", "64", "--dropout", "0.0",
        "--share-decoder-input-output-embed",
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", "2e-3",
        "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "100", "--clip-norm", "1.0",
        "--max-tokens", "1024", "--max-epoch", str(epochs),
        "--save-dir", save_dir, "--no-epoch-checkpoints", "--cpu", "--seed", "1", "--num-workers", "0",
        "--log-format", "simple", "--log-interval", "50",
    ]


def bleu_from_generate(gen_path: str) -> dict:
    import sacrebleu

    hyps, refs = {}, {}
    with open(gen_path) as f:
        for line in f:
            if line.startswith("H-"):
                i, _, text = line.rstrip("\n").split("\t", 2)
                hyps[int(i[2:])] = text
            elif line.startswith("T-"):
                i, text = line.rstrip("\n").split("\t", 1)
                refs[int(i[2:])] = text
    ids = sorted(refs)
    if not ids or set(ids) != set(hyps):
        raise SystemExit(f"could not parse hypotheses/references from {gen_path}")
    h, r = [hyps[i] for i in ids], [refs[i] for i in ids]
    bleu = sacrebleu.corpus_bleu(h, [r], tokenize="none")
    exact = sum(a == b for a, b in zip(h, r)) / len(ids)
    return {"bleu": round(bleu.score, 2), "exact_match": round(100 * exact, 1), "sentences": len(ids),
            "signature": str(bleu.get_signature() if hasattr(bleu, "get_signature") else "")}


def train_runs(out: str, prefix: str, names: List[str], train_cmd) -> None:
    """fairseq-train one run per attention under outputs/<run>; finished runs are skipped and
    an interrupted one resumes from its checkpoint_last.pt (``common.train_once``)."""
    for name in names:
        label, flags = ATTENTIONS[name]
        run = os.path.join(out, "runs", f"{prefix}_{name}")
        os.makedirs(run, exist_ok=True)
        cmd = train_cmd(os.path.join(run, "checkpoints"), flags)
        print(f"--- {label}: {' '.join(flags)}", flush=True)
        with open(os.path.join(run, "train_command.sh"), "w") as f:
            f.write(shlex.join(cmd) + "\n")
        env = {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        if common.train_once(cmd, os.path.join(run, "checkpoints"), common.key_of(cmd), name=label, tag="demo",
                             log_path=os.path.join(run, "train.log"), env=env, cwd=ROOT, echo=False,
                             progress=progress):
            for stale in ("bleu.json", "ppl.json"):  # results of an earlier training run
                if os.path.exists(os.path.join(run, stale)):
                    os.remove(os.path.join(run, stale))


def test_cmd(tool: str, data: str, run: str, *flags: str) -> List[str]:
    """A fairseq CLI on the test split with the run's best checkpoint."""
    best = os.path.join(run, "checkpoints", "checkpoint_best.pt")
    return fairseq(tool) + [data, "--user-dir", USER_DIR, "--path", best, "--gen-subset", "test", *flags]


def evaluate_runs(out: str, prefix: str, names: List[str], what: str, cmd_of, score, describe) -> Dict[str, dict]:
    """One fairseq evaluation per trained run; its ``<what>.json`` (deleted when the run is
    retrained) holds the result, so a rerun skips it. ``cmd_of(run)`` -> (command, log);
    ``score(run, log)`` -> the result; ``describe(result)`` -> what to print."""
    results = {}
    for name in names:
        label, _ = ATTENTIONS[name]
        run = os.path.join(out, "runs", f"{prefix}_{name}")
        res_path = os.path.join(run, f"{what}.json")
        if os.path.exists(res_path):
            with open(res_path) as f:
                results[name] = json.load(f)
            info(f"{label}: {describe(results[name], done=True)}")
            continue
        cmd, log = cmd_of(run)
        for stale in (log, os.path.join(run, "generate.txt")):
            if os.path.exists(stale):
                os.remove(stale)
        with open(os.path.join(run, f"{os.path.basename(log)[:-4]}_command.sh"), "w") as f:
            f.write(shlex.join(cmd) + "\n")
        run_logged(cmd, log)
        res = score(run, log)
        with open(res_path, "w") as f:
            json.dump(res, f, indent=1)
        results[name] = res
        info(f"{label}: {describe(res, done=False)}")
    return results


def stage_mt(out: str, data: str, names: List[str], epochs: int) -> Dict[str, dict]:
    banner(f"3/6 translation: fairseq-train arch fwp_transformer ({', '.join(names)}; {epochs} epochs each)")
    train_runs(out, "mt", names, lambda ckpt, flags: mt_train_cmd(data, ckpt, flags, epochs))
    banner("4/6 translation: fairseq-generate (beam 4) + sacreBLEU on test")

    def cmd_of(run):
        return test_cmd("generate", data, run, "--beam", "4", "--batch-size", "100", "--cpu", "--results-path", run,
                        # fairseq 0.12 drops a last batch of < 8 (fairseq#5036)
                        "--required-batch-size-multiple", "1"), os.path.join(run, "generate.log")

    def score(run, log):
        gen_path = os.path.join(run, "generate.txt")
        os.replace(os.path.join(run, "generate-test.txt"), gen_path)
        return bleu_from_generate(gen_path)

    return evaluate_runs(out, "mt", names, "bleu", cmd_of, score, lambda r, done: f"BLEU {r['bleu']}" + (
        " (already done)" if done else f", exact match {r['exact_match']}%"))


def stage_lm(out: str, data: str, names: List[str], epochs: int) -> Dict[str, dict]:
    banner(f"5/6 language model: fairseq-train arch fwp_lm ({', '.join(names)}; {epochs} epochs each)")
    train_runs(out, "lm", names, lambda ckpt, flags: lm_train_cmd(data, ckpt, flags, epochs))
    banner("6/6 language model: fairseq-eval-lm on test")

    def cmd_of(run):
        return test_cmd("eval_lm", data, run, "--tokens-per-sample", "64", "--max-tokens", "2048",
                        "--cpu"), os.path.join(run, "eval_lm.log")

    def score(run, log):
        with open(log) as f:
            m = re.findall(r"Loss \(base 2\): ([0-9.]+), Perplexity: ([0-9.]+|inf|nan)", f.read())
        if not m:
            raise common.RecipeError(f"no perplexity found in {log}")
        return {"loss_base2": float(m[-1][0]), "ppl": float(m[-1][1])}

    return evaluate_runs(out, "lm", names, "ppl", cmd_of, score,
                         lambda r, done: f"perplexity {r['ppl']}" + (" (already done)" if done else ""))


def dict_size(data: str) -> int:
    """Words a model must choose between: the corpus words plus </s> (fairseq pads
    dict.txt with never-seen madeupwordNNNN entries, which are not counted)."""
    with open(os.path.join(data, "dict.txt")) as f:
        return sum(1 for line in f if not line.startswith("madeupword")) + 1


def summary(out: str, mt: Dict[str, dict], lm: Dict[str, dict], lm_data: str, elapsed: float) -> str:
    lines = ["# fairseq-fwp demo results", ""]
    if mt:
        lines += [
            "Toy translation (reverse + lexicon, 16-word vocabularies), test set, beam 4:", "",
            "| model | flags | BLEU | exact match |", "|---|---|---:|---:|",
        ]
        for name, r in mt.items():
            label, flags = ATTENTIONS[name]
            lines.append(f"| {label} | `{' '.join(flags)}` | {r['bleu']:.2f} | {r['exact_match']:.1f}% |")
        lines.append("")
    if lm:
        uniform = dict_size(lm_data)
        lines += [
            f"Toy language model (agreement grammar), test perplexity (a uniform guess over the {uniform} words scores {uniform}):", "",
            "| model | flags | perplexity |", "|---|---|---:|",
        ]
        for name, r in lm.items():
            label, flags = ATTENTIONS[name]
            lines.append(f"| {label} | `{' '.join(flags)}` | {r['ppl']:.2f} |")
        lines.append("")
    lines.append(f"Outputs: {os.path.relpath(out, ROOT)}/ (runs/<run>/train.log, generate.txt, checkpoints/); "
                 f"this run took {elapsed:.0f}s.")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text)
    return text


def main(argv) -> int:
    p = argparse.ArgumentParser(prog="demo.sh", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=os.path.join(ROOT, "outputs", "demo"), help="output folder")
    p.add_argument("--fresh", action="store_true", help="delete --out first and redo every stage")
    p.add_argument("--models", default="linear,delta,softmax", help="comma list of linear, delta, softmax")
    p.add_argument("--mt-epochs", type=int, default=30)
    p.add_argument("--lm-epochs", type=int, default=8)
    p.add_argument("--mt-train", type=int, default=3000, help="translation training pairs")
    p.add_argument("--lm-train", type=int, default=5000, help="LM training sentences")
    p.add_argument("--skip-lm", action="store_true")
    p.add_argument("--skip-mt", action="store_true")
    a = common.parse_args(p, argv)
    names = [n.strip() for n in a.models.split(",") if n.strip()]
    bad = [n for n in names if n not in ATTENTIONS]
    if bad:
        p.error(f"--models: unknown {bad}; choose from {list(ATTENTIONS)}")
    out = os.path.abspath(a.out)
    if a.fresh:
        shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out, exist_ok=True)
    print(f"fairseq-fwp demo -> {os.path.relpath(out, ROOT)}/  (python: {PY})", flush=True)
    data = stage_data(out, a)
    mt = {} if a.skip_mt else stage_mt(out, data["mt"], names, a.mt_epochs)
    lm = {} if a.skip_lm else stage_lm(out, data["lm"], names, a.lm_epochs)
    banner("summary")
    print(summary(out, mt, lm, data["lm"], time.time() - T0), flush=True)
    return 0


COMMANDS = {"run": main}
