"""The paper's model settings (``fairseq_fwp.presets``) and every recipe row built from them.

``recipe_flags.json`` pins the ``--fwp-*`` flags (and the order they are written in) of
every row of every recipe, the demo and the benchmarks as they were before the recipes
read one table of presets: the same words must keep naming the same model.
"""

import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "recipes"))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from fwp_recipes import wikitext103 as wt, wmt14  # noqa: E402

PINNED = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipe_flags.json")))


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wmt14_rows():
    assert {n: list(m.flags) for n, m in wmt14.MODELS.items()} == PINNED["wmt14"]


def test_synthetic_rows():
    from fwp_recipes import synthetic as sweep

    got = {f"{s}/{scale}/{name}": list(flags) for s, scales in sweep.SETTINGS.items()
           for scale, conf in scales.items() for name, flags in conf["models"].items()}
    assert got == PINNED["synthetic"]


@pytest.mark.parametrize("row", sorted(PINNED["wikitext103"]))
def test_wikitext103_rows(row):
    assert wt.parse_setting(row.split()).model_flags() == PINNED["wikitext103"][row]


def test_demo_rows():
    from fwp_recipes import demo

    assert {n: [label, list(flags)] for n, (label, flags) in demo.ATTENTIONS.items()} == PINNED["demo"]


def test_bench_train_rows():
    bench = _load("fwp_bench_train_presets", "scripts/bench_train.py")
    got = {n: ["--arch", bench.ARCH, *flags] for n, (_, flags, _, _) in bench.MODELS.items()}
    assert got == PINNED["bench_train"]
    for name, (run, _, _, _) in bench.MODELS.items():  # the recipe's run of the same flags
        assert wt.parse_setting(run.replace("-m16", " --favor-features 16").replace("-", " ", 1).split()).name == run


def test_bench_generate_rows():
    from fairseq_fwp.presets import preset

    bench = _load("fwp_bench_generate_presets", "scripts/bench_generate.py")
    for name, (p, sizes) in bench.DECODERS.items():
        assert preset(p, **sizes) == PINNED["wmt14"][name]


def test_presets_table():
    from fairseq_fwp import presets

    assert presets.preset("linear") == PINNED["demo"]["linear"][1]
    assert presets.preset("delta") == PINNED["demo"]["delta"][1]
    assert presets.preset("performer", m=32) == PINNED["wmt14"]["performer-64"]
    assert presets.preset("dpfp", nu=4) == PINNED["wmt14"]["dpfp-512"]
    assert presets.flags("dpfp", "delta", nu=2) == PINNED["wmt14"]["dpfp-256-delta"]
    for bad in (lambda: presets.flags("softmax", "sum"), lambda: presets.flags("linear"),
                lambda: presets.preset("performer"), lambda: presets.preset("nosuch")):
        with pytest.raises(ValueError):
            bad()
