"""A tokenizer worker process: ``python -m ulmfit_core.tokenize_worker IN OUT``.

Reads ``(lang, batch_size, texts)`` pickled in the file IN, tokenizes the texts in this process with
:class:`ulmfit_core.text.Tokenizer`, and writes :func:`ulmfit_core.text.encode_tokens`'s ``(table, ids,
doc_offsets)`` pickled to the file OUT. :meth:`Tokenizer.tokenize` starts these for large corpora and
keeps both files in a private temporary folder of its own: nothing else should feed this a file.
"""
from __future__ import annotations

import pickle
import sys
from pathlib import Path

from ulmfit_core.text import Tokenizer, encode_tokens


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m ulmfit_core.tokenize_worker IN OUT", file=sys.stderr)
        return 2
    src, dst = Path(argv[0]), Path(argv[1])
    lang, batch_size, texts = pickle.loads(src.read_bytes())
    tokens = Tokenizer(lang, batch_size, n_workers=1).tokenize(texts)
    dst.write_bytes(pickle.dumps(encode_tokens(tokens), protocol=pickle.HIGHEST_PROTOCOL))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
