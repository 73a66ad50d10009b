"""The results file ``results/wikitext103.md``: one table per paper table, our numbers beside the paper's."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from .paper import paper_rows

def _m(x: Optional[float], digits: int = 2) -> str:
    return "—" if x is None else f"{x / 1e6:.{digits}f}"


def _p(x) -> str:
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    return f"{x:.2f}" if x < 1000 else f"{x:.0f}"


RESULTS_PREAMBLE = """# WikiText-103 results (paper Sec. 6.3, Tables 2-5)

Written by `recipes/wikitext103/evaluate.sh`; one row per run, replaced when the run is
evaluated again. Perplexities: *sliding* = every token scored with min(t, L-1) tokens of
context (the paper's Tables 2, 3, 5), *full* = the state carried through the whole split
(Table 4). The paper's numbers are beside ours (valid / test). State size = layers x heads
x d_dot x d_head, computed from the checkpoint. Table 4's Transformer-XL rows (paper only):
state 0.13M: 65.7 / 65.5; 1.05M: 29.3 / 30.1; 2.10M: 26.4 / 27.4; 6.29M: 24.6 / 25.5.
"""

SECTIONS = {
    2: ("Table 2: update rule, limited context (sliding window)",
        ["run", "config", "model", "update rule", "params (M)", "updates", "valid", "test",
         "full valid", "full test", "paper valid", "paper test"]),
    3: ("Table 3: Delta Net ablations (medium, sliding window)",
        ["run", "pos. encoding", "attn. norm.", "updates", "valid", "test", "paper valid", "paper test"]),
    4: ("Table 4: without truncating context (medium, state carried)",
        ["run", "model", "params (M)", "state size (M)", "updates", "valid", "test",
         "paper params (M)", "paper state (M)", "paper valid", "paper test"]),
    5: ("Table 5: non-overcapacity regime (small, d_dot = 256)",
        ["run", "model", "update rule", "d_dot (all heads)", "updates", "valid", "test",
         "full valid", "full test", "paper valid", "paper test"]),
    0: ("Other runs (no paper row)",
        ["run", "config", "model", "pos. encoding", "attn. norm.", "carry", "params (M)", "state size (M)",
         "updates", "sliding valid", "sliding test", "full valid", "full test"]),
}


def result_rows(s: Setting, stats: dict, ppl: Dict[Tuple[str, str], Optional[float]]) -> List[Tuple[int, list]]:
    """(section, row) for each table the run belongs to ('Other runs' when none)."""
    get = lambda mode, split: _p(ppl.get((mode, split)))  # noqa: E731
    rule = s.spec.update_rule if s.fast_weights else "—"
    norm = ("on" if s.effective_attn_norm else "off") if s.fast_weights else "—"
    upd = stats.get("num_updates") or "—"
    rows = []
    for table, paper in paper_rows(s):
        if table == 2:
            rows.append((2, [s.name, s.config, s.spec.label, rule, _m(stats["params"], 1), upd,
                             get("sliding", "valid"), get("sliding", "test"), get("full", "valid"),
                             get("full", "test"), *map(str, paper)]))
        elif table == 3:
            rows.append((3, [s.name, "yes" if s.pos else "no", "yes" if s.effective_attn_norm else "no", upd,
                             get("sliding", "valid"), get("sliding", "test"), *map(str, paper)]))
        elif table == 4:
            rows.append((4, [s.name, s.spec.label, _m(stats["params"], 1), _m(stats["state"]), upd,
                             get("full", "valid"), get("full", "test"), *paper]))
        elif table == 5:
            d_dot = "—" if stats["d_dot"] is None else stats["d_dot"] * stats["heads"]
            rows.append((5, [s.name, s.spec.label, rule, d_dot, upd, get("sliding", "valid"),
                             get("sliding", "test"), get("full", "valid"), get("full", "test"), *map(str, paper)]))
    if not rows:
        rows.append((0, [s.name, s.config, s.spec.label, "yes" if s.pos else "no", norm, "yes" if s.carry else "no",
                         _m(stats["params"], 3), _m(stats["state"], 4), upd, get("sliding", "valid"),
                         get("sliding", "test"), get("full", "valid"), get("full", "test")]))
    return rows
