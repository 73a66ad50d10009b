"""Checkpoints written before the shims and data modules moved into ``fairseq_fwp.compat`` /
``fairseq_fwp.data`` still load through fairseq's checkpoint_utils and give the same outputs.

tests/data/pre_compat_checkpoints/ holds a tiny fwp_lm (Delta Net, DPFP) and a tiny
fwp_transformer (FAVOR+), trained for 8 updates on CPU by that folder's ``make.py`` run in a
checkout of commit f0abccb, with the log-probabilities of fixed inputs and beam-search
hypotheses that code computed (``expected.pt``). In-process, a few seconds.
"""

import importlib.util
import pickletools
import zipfile
from pathlib import Path

import pytest
import torch

import fairseq_fwp  # noqa: F401  (registers the models; installs the checkpoint allowlist)

DATA = Path(__file__).resolve().parent / "data" / "pre_compat_checkpoints"


def _make():
    spec = importlib.util.spec_from_file_location("pre_compat_make", DATA / "make.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["lm", "mt"])
def test_checkpoint_pickle_names_no_plugin_module(name):
    """The pickles name only torch/collections/argparse globals: no module path of the
    plugin, so moving its modules needs no import alias for loading."""
    with zipfile.ZipFile(DATA / name / "checkpoint_last.pt") as z:
        data = z.read(next(f for f in z.namelist() if f.endswith("data.pkl")))
    globals_ = {arg for op, arg, _ in pickletools.genops(data) if op.name in ("GLOBAL", "STACK_GLOBAL") and arg}
    assert not any(str(g).startswith("fairseq_fwp") for g in globals_), globals_


def test_pre_move_checkpoints_load_and_decode_identically():
    expected = torch.load(DATA / "expected.pt", weights_only=False)
    got = _make().expected_outputs(str(DATA))
    for key in ("lm_tokens", "mt_src_tokens", "mt_src_lengths", "mt_prev_output_tokens"):
        assert torch.equal(got[key], expected[key]), key
    torch.testing.assert_close(got["lm_lprobs"], expected["lm_lprobs"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["mt_lprobs"], expected["mt_lprobs"], rtol=1e-5, atol=1e-5)
    assert len(got["mt_hypos"]) == len(expected["mt_hypos"])
    for beam, beam_expected in zip(got["mt_hypos"], expected["mt_hypos"]):
        assert [t.tolist() for t, _ in beam] == [t.tolist() for t, _ in beam_expected]
        torch.testing.assert_close(torch.stack([s for _, s in beam]), torch.stack([s for _, s in beam_expected]),
                                   rtol=1e-5, atol=1e-5)
