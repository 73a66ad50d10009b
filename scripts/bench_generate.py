#!/usr/bin/env python
"""Decoding speed and peak memory of ``fairseq-generate`` (beam 4) against target length.

Softmax attention keeps a key/value cache that grows with every generated token (and
is re-indexed for the beams at each step); a fast weight decoder keeps a fixed-size
state S (d_dot x d_head per head, plus z with attention normalisation). So for the
fast weight decoders memory and time per token should stay flat in the target
length, while softmax grows.

For each decoder (the WMT14 recipe's ``transformer``, ``linear``, ``delta`` and
``dpfp-256`` rows: all three attentions replaced, as in the recipe) the script trains
a small model for one update on a generated corpus (the weights do not matter for
speed), then runs ``fairseq-generate`` once per target length in a fresh process,
forcing the length with ``--min-len L --max-len-a 0 --max-len-b L``. It reads the
sentences/s and tokens/s fairseq prints, checks that every hypothesis has L tokens,
and measures peak memory in that process: ``torch.cuda.max_memory_allocated`` on
GPU, peak resident set size on CPU (which includes the Python/fairseq baseline, so
the table also shows the growth over the shortest length).

    python scripts/bench_generate.py                      # CPU, lengths 64 256 1024 4096
    python scripts/bench_generate.py --device cuda --fp16 # GPU
    python scripts/bench_generate.py --lengths 64,256 --decoders linear,delta

Model size (reduced from the big model, stated in the table header): ``--layers`` 2+2,
``--dim`` 256, ``--heads`` 4 (d_key = 64 as in the paper), FFN 4 x dim.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
USER_DIR = str(ROOT / "fairseq_fwp")

# the WMT14 recipe's names (d_key 64 at the default --dim 256 / --heads 4)
DECODERS = {"transformer": ("softmax", {}), "linear": ("linear", {}), "delta": ("delta", {}),
            "dpfp-256": ("dpfp", {"nu": 2})}
TRANSLATED = re.compile(r"Translated ([\d,]+) sentences \(([\d,]+) tokens\) in ([0-9.]+)s "
                        r"\(([0-9.]+) sentences/s, ([0-9.]+) tokens/s\)")


def child(argv):
    """Run fairseq-generate in this process, then report its peak memory as a JSON line."""
    import torch
    from fairseq_cli import generate

    sys.argv = ["fairseq-generate", *argv]
    generate.cli_main()
    if torch.cuda.is_available() and "--cpu" not in argv:
        peak = torch.cuda.max_memory_allocated()
        kind = "cuda_max_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        kind = "peak_rss"
    print("BENCH_MEMORY " + json.dumps({"bytes": peak, "kind": kind}), flush=True)


def run(cmd, log: Path) -> str:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    with open(log, "a") as f:
        f.write("$ " + shlex.join(map(str, cmd)) + "\n")
        p = subprocess.run(list(map(str, cmd)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env=env, cwd=ROOT)
        f.write(p.stdout)
    if p.returncode:
        sys.exit(f"failed ({p.returncode}): {shlex.join(map(str, cmd))}\n{p.stdout[-3000:]}")
    return p.stdout


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--fp16", action="store_true", help="half precision (GPU)")
    p.add_argument("--lengths", default="64,256,1024,4096")
    p.add_argument("--decoders", default=",".join(DECODERS), help=f"rows of the WMT14 recipe [{','.join(DECODERS)}]")
    p.add_argument("--sentences", type=int, default=4, help="source sentences (one batch; x beam 4 rows)")
    p.add_argument("--src-len", type=int, default=16)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_generate")
    a = p.parse_args()

    from fairseq_fwp.presets import preset

    lengths = [int(x) for x in a.lengths.split(",")]
    decoders = a.decoders.split(",")
    for d in decoders:
        if d not in DECODERS:
            sys.exit(f"unknown decoder {d!r}; valid: {', '.join(DECODERS)}")
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "bench.log"
    py = sys.executable
    dev = ["--cpu"] if a.device == "cpu" else (["--fp16"] if a.fp16 else [])

    # a corpus whose test split has `sentences` sources of exactly src_len words
    data = out / "data"
    if not (data / "bin" / "dict.src.txt").is_file():
        from fairseq_fwp.data.toy_data import write_translation_corpus

        write_translation_corpus(str(data / "raw"), task="copy", sizes=(64, 8, a.sentences), vocab_size=100,
                                 min_len=a.src_len, max_len=a.src_len, seed=5)
        run([py, "-m", "fairseq_cli.preprocess", "--source-lang", "src", "--target-lang", "tgt", "--joined-dictionary",
             "--trainpref", data / "raw/train", "--validpref", data / "raw/valid", "--testpref", data / "raw/test",
             "--destdir", data / "bin", "--workers", "1"], log)

    max_pos = max(lengths) + 8
    arch = ["--arch", "fwp_transformer", "--share-all-embeddings",
            "--encoder-layers", a.layers, "--decoder-layers", a.layers,
            "--encoder-embed-dim", a.dim, "--decoder-embed-dim", a.dim,
            "--encoder-ffn-embed-dim", 4 * a.dim, "--decoder-ffn-embed-dim", 4 * a.dim,
            "--encoder-attention-heads", a.heads, "--decoder-attention-heads", a.heads,
            "--max-source-positions", max_pos, "--max-target-positions", max_pos]
    rows = []
    for d in decoders:
        ck = out / f"{d}-L{a.layers}-d{a.dim}-max{max_pos}"
        if not (ck / "checkpoint_last.pt").is_file():
            run([py, "-m", "fairseq_cli.train", data / "bin", "--user-dir", USER_DIR, "--task", "translation",
                 *arch, *preset(DECODERS[d][0], **DECODERS[d][1]), "--optimizer", "adam", "--lr", "1e-4", "--max-tokens", "2000",
                 "--max-update", "1", "--disable-validation", "--no-epoch-checkpoints", "--save-dir", ck,
                 "--num-workers", "0", *(["--cpu"] if a.device == "cpu" else [])], log)
        for L in lengths:
            cmd = [py, __file__, "--child", data / "bin", "--user-dir", USER_DIR, "--task", "translation",
                   "--path", ck / "checkpoint_last.pt", "--gen-subset", "test", "--beam", a.beam,
                   "--min-len", L, "--max-len-a", 0, "--max-len-b", L, "--batch-size", a.sentences,
                   "--required-batch-size-multiple", 1, "--quiet", "--num-workers", 0, *dev]
            t0 = time.time()
            text = run(cmd, log)
            m = TRANSLATED.search(text)
            mem = json.loads(text.split("BENCH_MEMORY ", 1)[1].splitlines()[0])
            n, toks, secs, sps, tps = (float(x.replace(",", "")) for x in m.groups())
            if toks != n * (L + 1):  # L tokens + </s> each
                sys.exit(f"{d} L={L}: {toks:.0f} tokens for {n:.0f} sentences, expected {n * (L + 1):.0f}")
            sps = tps / (L + 1)  # fairseq prints sentences/s with 2 decimals (0.00 for slow runs)
            rows.append(dict(decoder=d, L=L, sentences_per_s=sps, ms_per_token=1000.0 / tps,
                             mem_mb=mem["bytes"] / 2**20, kind=mem["kind"], seconds=secs, wall=time.time() - t0))
            r = rows[-1]
            print(f"{d:12s} L={L:5d}  {sps:8.4g} sent/s  {r['ms_per_token']:7.3f} ms/token  "
                  f"{r['mem_mb']:8.1f} MiB ({r['kind']})", flush=True)

    base = {d: next(r["mem_mb"] for r in rows if r["decoder"] == d) for d in decoders}
    title = (f"fairseq-generate, beam {a.beam}, {a.sentences} sentences of {a.src_len} source tokens, "
             f"{a.layers}+{a.layers} layers, d_model {a.dim}, {a.heads} heads (d_key {a.dim // a.heads}), "
             f"device {a.device}{' fp16' if a.fp16 else ''}; memory = "
             f"{'torch.cuda.max_memory_allocated' if a.device == 'cuda' else 'peak RSS of the process'}")
    lines = [title, "", "| decoder | target length | sentences/s | ms per token | peak memory (MiB) | growth over L="
             f"{lengths[0]} (MiB) |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['decoder']} | {r['L']} | {r['sentences_per_s']:.4g} | {r['ms_per_token']:.3f} | "
                     f"{r['mem_mb']:.1f} | {r['mem_mb'] - base[r['decoder']]:+.1f} |")
    table = "\n".join(lines)
    (out / f"table-{a.device}.md").write_text(table + "\n")
    (out / f"results-{a.device}.json").write_text(json.dumps(rows, indent=1))
    print("\n" + table)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()
