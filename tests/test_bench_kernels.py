"""scripts/bench_kernels.py on a tiny CPU grid: the self-check, the speedup tables, exit status."""

import importlib.util
import pathlib
import runpy
import sys

import pytest
import torch

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "bench_kernels.py"

# 2 sequence lengths x 2 rules, one d_head and d_dot: a few hundred ms on one CPU core
TINY = ["--device", "cpu", "--dtype", "fp32", "--tokens", "256", "--t", "64,128", "--model-dim", "64",
        "--d-head", "32", "--d-dot", "16", "--impls", "chunk,recurrent,sdpa", "--warmup", "0", "--reps", "1"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_kernels", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # one intra-op thread: tiny shapes gain nothing from more, and on a busy CI machine
    # the OpenMP threads waiting for each other make the run many times slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield mod
    torch.set_num_threads(threads)


def tables(text):
    """The markdown tables of the output, in order, each a list of {column: cell} dicts."""
    out, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---") and i > 0 and lines[i - 1].startswith("| "):
            head = [c.strip() for c in lines[i - 1].strip("|").split("|")]
            rows = []
            for row in lines[i + 1:]:
                if not row.startswith("| "):
                    break
                rows.append(dict(zip(head, (c.strip() for c in row.strip().strip("|").split("|")))))
            out.append(rows)
    return out


def test_tiny_grid_checks_and_speedups(bench, capsys):
    assert bench.main(TINY) == 0
    text = capsys.readouterr().out
    assert "# versions: " in text and "fla not" in text
    main, fwd_bwd, fwd = tables(text)

    fast_weight = [r for r in main if r["impl"] in ("chunk", "recurrent")]
    assert len(fast_weight) == 2 * 2 * 2  # T x rule x impl
    for r in fast_weight:
        assert float(r["rel err"]) < 1e-5, r
        assert r["note"] == "" and r["fwd+bwd ms"] != "-", r
    sdpa = [r for r in main if r["impl"] == "sdpa"]
    assert len(sdpa) == 2 and all(r["rel err"] == "-" for r in sdpa)  # once per (T, d_head)

    assert "speedups (fwd+bwd)" in text and "speedups (fwd only)" in text
    for table in (fwd_bwd, fwd):
        assert [(r["rule"], r["T"]) for r in table] == [("sum", "64"), ("sum", "128"), ("delta", "64"), ("delta", "128")]
        for r in table:
            assert r["ours"] == "chunk" and r["d_head"] == "32" and r["d_dot"] == "16"
            assert r["x sdpa"].endswith("x") and r["x recurrent"].endswith("x")
            float(r["x sdpa"][:-1]), float(r["x recurrent"][:-1])
    assert all(r["targets"] == "-" for r in fwd_bwd)  # no target applies below T = 4096
    assert "targets" not in fwd[0]


def test_targets_column(bench):
    met = bench.targets("delta", 8192, {"fla-chunk": 1.2, "sdpa": 3.0, "recurrent": 25.0}, False)
    assert met == ">=1.1x fla-chunk met, >sdpa met, >=20x recurrent met"
    missed = bench.targets("sum", 8192, {"fla-chunk": 0.9, "sdpa": 0.5, "recurrent": 19.0}, True)
    assert missed == ">=1.1x fla-chunk MISSED, >sdpa MISSED, >=20x recurrent MISSED, ours CHECK FAILED"
    assert bench.targets("sum", 2048, {"sdpa": 0.5, "recurrent": 30.0}, False) == "-"
    assert bench.targets("sum", 4096, {"sdpa": 1.5}, False) == ">sdpa met"


def test_wrong_output_fails_the_check(bench, monkeypatch, capsys):
    build = bench.build

    def wrong_chunk(impl, *args, **kwargs):
        runner = build(impl, *args, **kwargs)
        if impl != "chunk" or isinstance(runner, str):
            return runner
        return runner._replace(fwd=lambda *x: runner.fwd(*x) * 1.1)

    monkeypatch.setattr(bench, "build", wrong_chunk)
    argv = TINY[:-6] + ["--t", "64", "--impls", "chunk,recurrent", "--warmup", "0", "--reps", "1"]
    assert bench.main(argv) == 1
    text = capsys.readouterr().out
    main, fwd_bwd, _ = tables(text)
    for r in main:
        if r["impl"] == "chunk":
            assert "CHECK FAILED" in r["note"] and 0.09 < float(r["rel err"]) < 0.11, r
        else:
            assert r["note"] == "" and float(r["rel err"]) < 1e-5, r
    assert all("ours CHECK FAILED" in r["targets"] for r in fwd_bwd)
    assert "self-check FAILED for 2 row(s)" in text


def test_no_check_and_forward_only(bench, capsys):
    argv = TINY + ["--t", "64", "--rules", "delta", "--impls", "chunk", "--no-check", "--no-backward"]
    assert bench.main(argv) == 0
    text = capsys.readouterr().out
    main, fwd = tables(text)
    assert [(r["impl"], r["rel err"], r["fwd+bwd ms"]) for r in main] == [("chunk", "-", "-")]
    assert "speedups (fwd+bwd): not measured (--no-backward)" in text
    assert fwd[0]["ours"] == "chunk" and "targets" not in fwd[0]


def test_fla_kwargs_follow_the_signature(bench):
    def old(q, k, v, beta, scale=None, initial_state=None, head_first=True):
        pass

    def new(q, k, v, scale=None, initial_state=None, normalize=True, cu_seqlens=None):
        pass

    assert bench.fla_kwargs(old, scale=1.0, normalize=False) == {"scale": 1.0, "head_first": False}
    assert bench.fla_kwargs(new, scale=1.0, normalize=False) == {"scale": 1.0, "normalize": False}


def test_command_line_exit_status(monkeypatch, capsys):
    """Run as a script: the exit status is main()'s (0 here); a bad --impls is an argparse error."""
    monkeypatch.setattr(sys, "argv", [str(SCRIPT)] + TINY + ["--t", "64", "--rules", "sum", "--impls", "chunk"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert exc.value.code == 0
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--impls", "chunk,cuda-magic"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--impls" in err and "cuda-magic" in err


def test_failing_implementation_is_a_note_not_a_check_failure(bench, monkeypatch, capsys):
    """An exception (unsupported shape, OOM, ...) gives a 'failed' row; the other rows still run."""
    build = bench.build

    def oom_recurrent(impl, *args, **kwargs):
        runner = build(impl, *args, **kwargs)
        if impl != "recurrent":
            return runner

        def fwd(*x):
            raise RuntimeError("CUDA out of memory. Tried to allocate 64.00 GiB\nmore text")

        return runner._replace(fwd=fwd)

    monkeypatch.setattr(bench, "build", oom_recurrent)
    argv = TINY + ["--t", "64,128", "--rules", "sum", "--impls", "recurrent,chunk"]
    assert bench.main(argv) == 0
    main, fwd_bwd, _ = tables(capsys.readouterr().out)
    assert [r["impl"] for r in main] == ["recurrent", "chunk"] * 2
    for r in main:
        if r["impl"] == "recurrent":
            assert r["note"] == "failed: RuntimeError: CUDA out of memory. Tried to allocate 64.00 GiB", r
            assert r["fwd ms"] == "-" and r["rel err"] == "-"
        else:
            assert r["note"] == "" and r["fwd+bwd ms"] != "-"
    assert all(r["x recurrent"] == "-" for r in fwd_bwd)
