"""Generated archives with the real names and layout (a toy translation task) for the smoke run and the tests."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Dict, Sequence

from .archives import ARCHIVES, CORPORA
from .paper import SRC

# ------------------------------------------------------------------ generated archives
def _sgm(segs: Sequence[str], kind: str, lang: str, setid: str) -> str:
    """A WMT-style .sgm file: <srcset>/<refset>, documents of 10 segments."""
    if kind == "src":
        out, doc = [f'<srcset setid="{setid}" srclang="any">'], '<doc docid="doc{}" genre="news" origlang="en">'
    else:
        out = [f'<refset setid="{setid}" srclang="any" trglang="{lang}">']
        doc = '<doc sysid="ref" docid="doc{}" genre="news" origlang="en">'
    for d in range(0, len(segs), 10):
        out.append(doc.format(d // 10))
        for i, s in enumerate(segs[d:d + 10], 1):
            out.append(f'<seg id="{i}">{s}</seg>')
        out.append("</doc>")
    out.append("</srcset>" if kind == "src" else "</refset>")
    return "\n".join(out) + "\n"


def _add(t: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode("utf-8")
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    t.addfile(info, io.BytesIO(data))


# toy lexicon for the generated archives: toy_data's source word j is TOY_EN[j]; its
# translation, target word (7j+3) % 16, is TOY_DE[(7j+3) % 16] (the same word in German)
TOY_EN = ("house", "tree", "water", "e-mail", "green", "small", "city", "river",
          "dog", "book", "night", "day", "friend", "school", "world", "car")
_TOY_DE = ("haus", "baum", "wasser", "e-mail", "grün", "klein", "stadt", "fluss",
           "hund", "buch", "nacht", "tag", "freund", "schule", "welt", "auto")
TOY_DE = tuple(_TOY_DE[[(7 * j + 3) % 16 for j in range(16)].index(k)] for k in range(16))


def write_fake_archives(out: Path, train_pairs: int = 3000, valid: int = 100, test: int = 103,
                        task: str = "copy", max_len: int = 8, seed: int = 1) -> Dict[str, int]:
    """The five archives with the real names and inner layout (tgz, .sgm for the test sets),
    filled with ``fairseq_fwp.data.toy_data`` pairs written as sentences through a 16-word
    lexicon ("E-mail friend day." -> "E-mail freund tag."): capitals, punctuation, a
    hyphenated word (Moses' ``@-@``, compound splitting) and a non-ASCII letter.

    The training text also holds pairs that cleaning must drop (an empty side, a length
    ratio above 1.5); Europarl, CommonCrawl and News Commentary share the pairs.
    Returns the counts a prepare run must find."""
    from fairseq_fwp.data.toy_data import translation_pairs

    def sentence(words: str, lexicon) -> str:
        w = [lexicon[int(x[1:])] for x in words.split()]
        return " ".join([w[0].capitalize(), *w[1:]]) + "."

    def make(n, k):
        return [(sentence(s, TOY_EN), sentence(t, TOY_DE))
                for s, t in translation_pairs(n, task, len(TOY_EN), 3, max_len, seed=seed * 1000 + k)]

    out.mkdir(parents=True, exist_ok=True)
    train = make(train_pairs, 0)
    bad = [("", "Baum haus."), ("House tree water dog book night day car.", "Haus."), ("Tree.", "")]
    train = train[:10] + bad + train[10:]
    thirds = [train[i::3] for i in range(3)]
    sets = {"valid": make(valid, 1), "test": make(test, 2)}
    texts = dict(zip(CORPORA, thirds))
    for a in ARCHIVES:
        with tarfile.open(out / a.file, "w:gz") as t:
            for role, member in a.members.items():
                name, lang = role.rsplit(".", 1)
                side = 0 if lang == SRC else 1
                if name in ("valid", "test"):
                    segs = [p[side] for p in sets[name]]
                    setid = "newstest2013" if name == "valid" else "newstest2014"
                    _add(t, member, _sgm(segs, "src" if lang == SRC else "ref", lang, setid))
                else:
                    lines = [p[side] for p in texts[name]]
                    _add(t, member, "".join(x + "\n" for x in lines))
            if a.file == "training-parallel-europarl-v7.tgz":  # the real archive holds other pairs too
                _add(t, "training/europarl-v7.fr-en.fr", "Bonjour.\n")
    return {"train": len(train), "dropped": len(bad), "valid": valid, "test": test}
