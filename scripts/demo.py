#!/usr/bin/env python
"""fairseq-fwp demo: toy translation + toy language modelling with three attentions.

Run through ``bash scripts/demo.sh`` (which sets up the environment first). Stages:

1. data        synthetic corpora (fairseq_fwp.toy_data): "translation" = reverse the
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
full fairseq log and results; ``summary.md`` at the end. Every stage writes a
``.done`` marker, so re-running skips finished work; an interrupted training run
resumes from its ``checkpoint_last.pt``. ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_DIR = os.path.join(ROOT, "fairseq_fwp")
PY = sys.executable

sys.path.insert(0, ROOT)
from fairseq_fwp import presets, toy_data  # noqa: E402  (imports fairseq_fwp: registers models, allowlist)

# name: (label, fwp flags): the Linear Transformer (sum rule, attention normalisation), Delta
# Net (delta rule, sum normalisation) and the softmax baseline of fairseq_fwp.presets
ATTENTIONS = {name: (presets.PRESETS[preset].label, presets.preset(preset))
              for name, preset in (("linear", "linear"), ("delta", "delta"), ("softmax", "softmax"))}

T0 = time.time()


def banner(text: str) -> None:
    print(f"\n=== [{time.time() - T0:6.0f}s] {text} ===", flush=True)


def info(text: str) -> None:
    print(f"    {text}", flush=True)


def done_marker(path: str) -> str:
    return os.path.join(path, ".done")


def is_done(path: str, cmd: Optional[List[str]] = None) -> bool:
    """Finished before (with the same command line, when ``cmd`` is given)."""
    if not os.path.exists(done_marker(path)):
        return False
    if cmd is None:
        return True
    try:
        with open(done_marker(path)) as f:
            return json.load(f).get("cmd") == cmd
    except (OSError, ValueError):
        return False


def mark_done(path: str, payload: Optional[dict] = None) -> None:
    with open(done_marker(path), "w") as f:
        json.dump(payload or {}, f)


def _progress_line(log_path: str) -> Optional[str]:
    """The newest training/validation line of a fairseq log, shortened."""
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 20000))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        m = re.search(r"\| (train_inner|train|valid) \| epoch (\d+)", line)
        if m:
            stats = dict(re.findall(r"\b(loss|ppl|num_updates|bleu)[ =]([0-9.]+)", line))
            kind = {"train_inner": "train", "train": "train (epoch)", "valid": "valid"}[m.group(1)]
            return f"epoch {int(m.group(2))} {kind}: " + ", ".join(f"{k} {v}" for k, v in stats.items())
    return None


def run_logged(cmd: List[str], log_path: str, poll: float = 15.0) -> None:
    """Run a fairseq CLI, full output to log_path, a short progress line every ``poll`` s."""
    with open(log_path, "a") as log:
        log.write(f"\n$ {shlex.join(cmd)}\n")
        log.flush()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # Tiny models: one intra-op thread is as fast as two and avoids the huge slow-down
        # of spinning OpenMP threads when the cores are shared. Override by exporting it.
        env.setdefault("OMP_NUM_THREADS", "1")
        start = time.time()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        last = None
        try:
            while True:
                try:
                    proc.wait(timeout=poll)
                    break
                except subprocess.TimeoutExpired:
                    line = _progress_line(log_path)
                    if line and line != last:
                        info(f"[{time.time() - start:5.0f}s] {line}")
                        last = line
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            raise
    if proc.returncode != 0:
        print(f"\n!!! command failed (exit {proc.returncode}); last lines of {log_path}:", flush=True)
        with open(log_path) as f:
            print("".join(f.readlines()[-25:]), flush=True)
        raise SystemExit(proc.returncode)
    line = _progress_line(log_path)
    if line:
        info(f"last: {line}")
    info(f"finished in {time.time() - start:.0f}s (full log: {os.path.relpath(log_path, ROOT)})")


def fairseq(module: str) -> List[str]:
    return [PY, "-m", f"fairseq_cli.{module}"]


# ----------------------------------------------------------------------------- stages


def stage_data(out: str, a) -> Dict[str, str]:
    raw_mt, raw_lm = os.path.join(out, "data", "mt_raw"), os.path.join(out, "data", "lm_raw")
    bin_mt, bin_lm = os.path.join(out, "data", "mt_bin"), os.path.join(out, "data", "lm_bin")
    banner("1/6 data: synthetic corpora")
    if is_done(raw_mt) and is_done(raw_lm):
        info("already done")
    else:
        toy_data.write_translation_corpus(raw_mt, task="reverse", sizes=(a.mt_train, 200, 200), vocab_size=16,
                                          min_len=3, max_len=10, seed=1)
        mark_done(raw_mt)
        toy_data.write_lm_corpus(raw_lm, sizes=(a.lm_train, 400, 400), seed=1)
        mark_done(raw_lm)
        with open(os.path.join(raw_mt, "test.src")) as fs, open(os.path.join(raw_mt, "test.tgt")) as ft:
            info(f"translation example:  {fs.readline().strip()}  ->  {ft.readline().strip()}")
        with open(os.path.join(raw_lm, "test.txt")) as f:
            info(f"LM example:           {f.readline().strip()}")
    banner("2/6 preprocess: fairseq-preprocess")
    if is_done(bin_mt):
        info("translation: already done")
    else:
        shutil.rmtree(bin_mt, ignore_errors=True)
        os.makedirs(bin_mt)
        run_logged(
            fairseq("preprocess") + [
                "--source-lang", "src", "--target-lang", "tgt", "--joined-dictionary",
                "--trainpref", f"{raw_mt}/train", "--validpref", f"{raw_mt}/valid", "--testpref", f"{raw_mt}/test",
                "--destdir", bin_mt, "--workers", "1",
            ],
            os.path.join(bin_mt, "preprocess.log"),
        )
        mark_done(bin_mt)
    if is_done(bin_lm):
        info("language model: already done")
    else:
        shutil.rmtree(bin_lm, ignore_errors=True)
        os.makedirs(bin_lm)
        run_logged(
            fairseq("preprocess") + [
                "--only-source", "--trainpref", f"{raw_lm}/train.txt", "--validpref", f"{raw_lm}/valid.txt",
                "--testpref", f"{raw_lm}/test.txt", "--destdir", bin_lm, "--workers", "1",
            ],
            os.path.join(bin_lm, "preprocess.log"),
        )
        mark_done(bin_lm)
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
    an interrupted one resumes from its checkpoint_last.pt."""
    for name in names:
        label, flags = ATTENTIONS[name]
        run = os.path.join(out, "runs", f"{prefix}_{name}")
        os.makedirs(run, exist_ok=True)
        cmd = train_cmd(os.path.join(run, "checkpoints"), flags)
        print(f"--- {label}: {' '.join(flags)}", flush=True)
        if is_done(run, cmd):
            info("already trained")
            continue
        with open(os.path.join(run, "train_command.sh"), "w") as f:
            f.write(shlex.join(cmd) + "\n")
        if os.path.exists(os.path.join(run, "checkpoints", "checkpoint_last.pt")):
            info("resuming from checkpoint_last.pt (fairseq continues where it stopped)")
        for stale in ("bleu.json", "ppl.json"):  # results of an earlier training run
            if os.path.exists(os.path.join(run, stale)):
                os.remove(os.path.join(run, stale))
        run_logged(cmd, os.path.join(run, "train.log"))
        mark_done(run, {"cmd": cmd})


def stage_mt(out: str, data: str, names: List[str], epochs: int) -> Dict[str, dict]:
    results = {}
    banner(f"3/6 translation: fairseq-train arch fwp_transformer ({', '.join(names)}; {epochs} epochs each)")
    train_runs(out, "mt", names, lambda ckpt, flags: mt_train_cmd(data, ckpt, flags, epochs))
    banner("4/6 translation: fairseq-generate (beam 4) + sacreBLEU on test")
    for name in names:
        label, _ = ATTENTIONS[name]
        run = os.path.join(out, "runs", f"mt_{name}")
        res_path = os.path.join(run, "bleu.json")
        if os.path.exists(res_path):
            with open(res_path) as f:
                results[name] = json.load(f)
            info(f"{label}: BLEU {results[name]['bleu']} (already done)")
            continue
        gen_path = os.path.join(run, "generate.txt")
        if os.path.exists(gen_path):
            os.remove(gen_path)
        cmd = fairseq("generate") + [
            data, "--user-dir", USER_DIR, "--path", os.path.join(run, "checkpoints", "checkpoint_best.pt"),
            "--gen-subset", "test", "--beam", "4", "--batch-size", "100", "--cpu", "--results-path", run,
            "--required-batch-size-multiple", "1",  # fairseq 0.12 drops a last batch of < 8 (fairseq#5036)
        ]
        with open(os.path.join(run, "generate_command.sh"), "w") as f:
            f.write(shlex.join(cmd) + "\n")
        run_logged(cmd, os.path.join(run, "generate.log"))
        os.replace(os.path.join(run, "generate-test.txt"), gen_path)
        res = bleu_from_generate(gen_path)
        with open(res_path, "w") as f:
            json.dump(res, f, indent=1)
        results[name] = res
        info(f"{label}: BLEU {res['bleu']}, exact match {res['exact_match']}%")
    return results


def stage_lm(out: str, data: str, names: List[str], epochs: int) -> Dict[str, dict]:
    results = {}
    banner(f"5/6 language model: fairseq-train arch fwp_lm ({', '.join(names)}; {epochs} epochs each)")
    train_runs(out, "lm", names, lambda ckpt, flags: lm_train_cmd(data, ckpt, flags, epochs))
    banner("6/6 language model: fairseq-eval-lm on test")
    for name in names:
        label, _ = ATTENTIONS[name]
        run = os.path.join(out, "runs", f"lm_{name}")
        res_path = os.path.join(run, "ppl.json")
        if os.path.exists(res_path):
            with open(res_path) as f:
                results[name] = json.load(f)
            info(f"{label}: perplexity {results[name]['ppl']} (already done)")
            continue
        log = os.path.join(run, "eval_lm.log")
        if os.path.exists(log):
            os.remove(log)
        cmd = fairseq("eval_lm") + [
            data, "--user-dir", USER_DIR, "--path", os.path.join(run, "checkpoints", "checkpoint_best.pt"),
            "--gen-subset", "test", "--tokens-per-sample", "64", "--max-tokens", "2048", "--cpu",
        ]
        with open(os.path.join(run, "eval_lm_command.sh"), "w") as f:
            f.write(shlex.join(cmd) + "\n")
        run_logged(cmd, log)
        with open(log) as f:
            m = re.findall(r"Loss \(base 2\): ([0-9.]+), Perplexity: ([0-9.]+|inf|nan)", f.read())
        if not m:
            raise SystemExit(f"no perplexity found in {log}")
        res = {"loss_base2": float(m[-1][0]), "ppl": float(m[-1][1])}
        with open(res_path, "w") as f:
            json.dump(res, f, indent=1)
        results[name] = res
        info(f"{label}: perplexity {res['ppl']}")
    return results


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
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
    a = p.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
