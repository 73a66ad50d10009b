"""The demo (scripts/demo.sh -> recipes/launch.py demo run): every stage at a tiny size, and
a rerun that skips every finished stage (the recipes' step markers)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--models", "linear", "--mt-epochs", "1", "--lm-epochs", "1", "--mt-train", "200", "--lm-train", "200"]


def _demo(out, *extra):
    return subprocess.run([sys.executable, os.path.join(ROOT, "recipes", "launch.py"), "demo", "run", "--out",
                           str(out), *ARGS, *extra], capture_output=True, text=True, timeout=900, cwd=ROOT)


def test_demo_runs_then_skips(tmp_path):
    first = _demo(tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    summary = (tmp_path / "summary.md").read_text()
    assert "| Linear Transformer | `--fwp-feature-map linear --fwp-update-rule sum --fwp-attn-norm` |" in summary
    again = _demo(tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("already done") == 5 and again.stderr.count("training finished earlier") == 2
    assert (tmp_path / "summary.md").read_text().split("this run took")[0] == summary.split("this run took")[0]


def test_demo_rejects_an_unknown_model(tmp_path):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "recipes", "launch.py"), "demo", "run", "--out",
                        str(tmp_path), "--models", "nosuch"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "--models: unknown ['nosuch']" in p.stderr
