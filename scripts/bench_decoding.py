#!/usr/bin/env python
"""Decoding speed of a translation checkpoint, with and without ``--print-alignment``.

Loads the checkpoint once per mode, builds fairseq's generator exactly as
``fairseq-generate`` does (``prepare_for_inference_`` then ``build_generator``), and
times ``task.inference_step`` over the same first batches of a split; prints a
markdown table with the minimum and median over the repeats.

    python scripts/bench_decoding.py data-bin/toy --path checkpoints/toy/checkpoint_best.pt \
        --subset test --beam 4 --batch-size 50 --batches 16 --repeats 5
"""

import argparse
import os
import statistics
import time

import torch


def time_mode(a, print_alignment: bool):
    from fairseq import checkpoint_utils, options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = [a.data, "--path", a.path, "--beam", str(a.beam), "--gen-subset", a.subset,
            "--batch-size", str(a.batch_size), "--user-dir", a.user_dir]
    if not torch.cuda.is_available() or a.cpu:
        argv.append("--cpu")
    if print_alignment:
        argv.append("--print-alignment")
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_generation_parser(), argv))
    task = tasks.setup_task(cfg.task)
    task.load_dataset(a.subset)
    models, _ = checkpoint_utils.load_model_ensemble([a.path], task=task)
    use_cuda = "--cpu" not in argv
    for m in models:
        m.prepare_for_inference_(cfg)
        if use_cuda:
            m.cuda()
    gen = task.build_generator(models, cfg.generation)
    itr = task.get_batch_iterator(dataset=task.dataset(a.subset), max_sentences=a.batch_size, num_workers=0)
    batches = [b for _, b in zip(range(a.batches), itr.next_epoch_itr(shuffle=False))]
    if use_cuda:
        from fairseq import utils

        batches = [utils.move_to_cuda(b) for b in batches]
    times, cpu = [], []
    for _ in range(a.repeats):
        if use_cuda:
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.no_grad():
            for b in batches:
                task.inference_step(gen, models, b)
        if use_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return sum(b["nsentences"] for b in batches), min(times), statistics.median(times), min(cpu)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("--path", required=True, help="checkpoint")
    p.add_argument("--user-dir", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fairseq_fwp"))
    p.add_argument("--subset", default="test")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--batches", type=int, default=16, help="first N batches of the split")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--modes", default="plain,align", help="comma list of plain, align (--print-alignment)")
    a = p.parse_args()
    print("| mode | sentences | min wall s | median wall s | min CPU s | sentences/s (min wall) |")
    print("|---|---|---|---|---|---|")
    for mode in a.modes.split(","):
        n, best, med, best_cpu = time_mode(a, mode == "align")
        label = "--print-alignment" if mode == "align" else "plain"
        print(f"| {label} | {n} | {best:.3f} | {med:.3f} | {best_cpu:.3f} | {n / best:.0f} |", flush=True)


if __name__ == "__main__":
    main()
