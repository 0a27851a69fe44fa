"""Corpus and tokens (paper-method.md section 1.1).

Documents come from Debian's packaged prose (offline default), a local text folder, or a Hugging
Face dataset. Each document is cut into windows of ``seq_len`` tokens and a BOS column is
prepended. Windows never span two documents: the paper reaches the same end by dropping rows that
contain a separator token; cutting per document keeps more rows of short documents.
"""

from __future__ import annotations

import glob
import html
import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from featureinterp.config import CorpusSpec, Preset
from featureinterp.errors import ConfigError, UnavailableError

__all__ = [
    "bos_token_id",
    "build_tokens",
    "check_token_rows",
    "decode_rows",
    "decode_tokens",
    "load_documents",
    "token_rows",
]

logger = logging.getLogger(__name__)

ANARCHISM_HTML = "/usr/share/doc/anarchism/html"
FORTUNES_DIR = "/usr/share/games/fortunes"
_P_RE = re.compile(r"<p[^>]*>(.*?)</p>", re.DOTALL | re.IGNORECASE)
_TAG_RE = re.compile(r"<[^>]+>")
_WS_RE = re.compile(r"\s+")
MIN_WORDS = 8
_SKIP_FORTUNES = {"ascii-art"}  # pictures, not prose


def _clean(text: str) -> str:
    return _WS_RE.sub(" ", html.unescape(_TAG_RE.sub(" ", text))).strip()


def _debian_documents() -> Iterator[str]:
    html_files = sorted(glob.glob(f"{ANARCHISM_HTML}/*.html"))
    fortune_files = sorted(
        p
        for p in glob.glob(f"{FORTUNES_DIR}/*")
        if Path(p).is_file() and "." not in Path(p).name and Path(p).name not in _SKIP_FORTUNES
    )
    if not html_files or not fortune_files:
        raise UnavailableError(
            "the embedded corpus needs Debian's 'anarchism' and 'fortunes' packages "
            f"(looked in {ANARCHISM_HTML} and {FORTUNES_DIR}); run scripts/install, or "
            "`sudo apt-get install anarchism fortunes`, or set the preset's corpus to a text folder"
        )
    for f in html_files:
        for para in _P_RE.findall(Path(f).read_text(errors="replace")):
            text = _clean(para)
            if len(text.split()) >= MIN_WORDS:
                yield text
    for f in fortune_files:
        for cookie in Path(f).read_text(errors="replace").split("\n%\n"):
            text = _WS_RE.sub(" ", cookie.strip("%\n ")).strip()
            if len(text.split()) >= MIN_WORDS:
                yield text


def _text_dir_documents(path: str) -> Iterator[str]:
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"corpus folder {path!r} does not exist or is not a folder")
    files = sorted(p for ext in ("*.txt", "*.md") for p in root.rglob(ext))
    if not files:
        raise ConfigError(f"corpus folder {path!r} holds no *.txt or *.md files")
    for f in files:
        for para in re.split(r"\n\s*\n", f.read_text(errors="replace")):
            text = _WS_RE.sub(" ", para).strip()
            if text:
                yield text


def _hf_documents(dataset_id: str, split: str) -> Iterator[str]:
    try:
        import datasets

        ds = datasets.load_dataset(dataset_id, split=split, streaming=True)
    except Exception as err:  # datasets raises many types for "not reachable / not found"
        raise UnavailableError(
            f"cannot open Hugging Face dataset {dataset_id!r} (split {split!r}): {err}. "
            "This preset needs the hub (unset HF_HUB_OFFLINE and check the network), "
            "or point the corpus at a local text folder (source 'text_dir')."
        ) from err
    for example in ds:
        yield example["text"]


def load_documents(spec: CorpusSpec, seed: int = 0) -> list[str]:
    """Documents of the corpus, ASCII-filtered and capped at ``spec.max_documents``.

    When the source holds more documents than the cap, a seeded sample is kept (in source order)
    so a small preset still mixes all parts of the corpus.
    """
    if spec.source == "debian":
        docs = list(_debian_documents())
    elif spec.source == "text_dir":
        if not spec.path:
            raise ConfigError("corpus source 'text_dir' needs a path")
        docs = list(_text_dir_documents(spec.path))
    elif spec.source == "hf_dataset":
        if not spec.path:
            raise ConfigError("corpus source 'hf_dataset' needs a dataset id in path")
        docs = []
        for text in _hf_documents(spec.path, spec.split):
            docs.append(text[:256])  # paper: first 8 * seq_len characters, so one document gives few rows
            if len(docs) >= spec.max_documents:
                break
    else:
        raise ConfigError(f"unknown corpus source {spec.source!r}: use 'debian', 'text_dir' or 'hf_dataset'")
    if spec.ascii_only:
        docs = [d for d in docs if d.isascii()]
    if len(docs) > spec.max_documents:
        keep = np.sort(np.random.default_rng(seed).choice(len(docs), spec.max_documents, replace=False))
        docs = [docs[i] for i in keep]
    return docs


def token_rows(
    documents: list[str],
    tokenizer: Any,
    seq_len: int,
    n_rows: int,
    bos_id: int | None,
    seed: int = 0,
) -> np.ndarray:
    """Cut documents into ``[n_rows, (1 +) seq_len]`` int32 rows, BOS first when ``bos_id`` is set.

    Windows holding a special token are dropped (paper step 7). If more windows exist than
    ``n_rows``, a seeded sample is kept in corpus order.
    """
    if not documents:
        raise ConfigError("the corpus is empty: no documents survived loading and filtering")
    ids = tokenizer(documents, add_special_tokens=False)["input_ids"]
    special = np.array(sorted(set(tokenizer.all_special_ids)), dtype=np.int64)
    windows = [
        doc[start : start + seq_len] for doc in ids for start in range(0, len(doc) - seq_len + 1, seq_len)
    ]
    if windows:
        rows = np.asarray(windows, dtype=np.int64)
        rows = rows[~np.isin(rows, special).any(axis=1)]
    else:
        rows = np.zeros((0, seq_len), dtype=np.int64)
    if len(rows) < n_rows:
        raise ConfigError(
            f"corpus too small: {len(rows):,} rows of {seq_len} tokens from {len(documents):,} documents, "
            f"but the preset asks for n_rows={n_rows:,}; lower n_rows or add text"
        )
    keep = np.sort(np.random.default_rng(seed).choice(len(rows), n_rows, replace=False))
    rows = rows[keep]
    if bos_id is not None:
        rows = np.concatenate([np.full((n_rows, 1), bos_id, dtype=np.int64), rows], axis=1)
    return rows.astype(np.int32)


def decode_rows(tokenizer: Any, rows: np.ndarray, skip_first: bool) -> list[str]:
    """Row texts (without the BOS column when ``skip_first``)."""
    rows = np.asarray(rows)[:, 1:] if skip_first else np.asarray(rows)
    return tokenizer.batch_decode(rows.tolist())


def decode_tokens(tokenizer: Any, rows: np.ndarray) -> list[list[str]]:
    """Each token of each row decoded on its own (the strings records and prompts show).

    Distinct ids are decoded once: 20k rows x 33 tokens hold only a few thousand distinct ids.
    """
    rows = np.asarray(rows)
    uniq, inverse = np.unique(rows, return_inverse=True)
    pieces = np.array(tokenizer.batch_decode(uniq.reshape(-1, 1).tolist()), dtype=object)
    return pieces[inverse.reshape(rows.shape)].tolist()


def bos_token_id(tokenizer: Any, bos_token: str | None) -> int:
    """Id of the row-start token: ``bos_token`` if given, else the tokenizer's BOS."""
    if bos_token is not None:
        tid = tokenizer.convert_tokens_to_ids(bos_token)
        if tid is None or tokenizer.convert_ids_to_tokens(tid) != bos_token:
            raise ConfigError(f"BOS token {bos_token!r} is not in the tokenizer's vocabulary")
        return int(tid)
    if tokenizer.bos_token_id is None:
        raise ConfigError(
            "the tokenizer has no BOS token: set the preset's model.bos_token or prepend_bos=False"
        )
    return int(tokenizer.bos_token_id)


def build_tokens(preset: Preset, tokenizer: Any) -> np.ndarray:
    """The preset's token rows ``[n_rows, row_len]`` (int32): load, filter, cut, sample."""
    docs = load_documents(preset.corpus, seed=preset.seed)
    bos = bos_token_id(tokenizer, preset.model.bos_token) if preset.prepend_bos else None
    return token_rows(docs, tokenizer, preset.seq_len, preset.n_rows, bos, seed=preset.seed)


def check_token_rows(
    rows: np.ndarray, n_rows: int, row_len: int, bos_id: int | None, special_ids: Iterable[int]
) -> list[str]:
    """Problems with a token table (empty list when it is well formed)."""
    problems = []
    if rows.shape != (n_rows, row_len):
        problems.append(f"shape {rows.shape} != expected {(n_rows, row_len)}")
        return problems
    body = rows[:, 1:] if bos_id is not None else rows
    if bos_id is not None and not (rows[:, 0] == bos_id).all():
        problems.append(f"{int((rows[:, 0] != bos_id).sum())} rows do not start with BOS id {bos_id}")
    n_special = int(np.isin(body, np.asarray(sorted(special_ids))).any(axis=1).sum())
    if n_special:
        problems.append(f"{n_special} rows contain a special token after position 0")
    return problems


def tokens_hash(rows: np.ndarray, model_name: str, tokenizer: Any) -> str:
    """Content hash of a token table and the tokenizer that made it (the corpus's data version)."""
    from featureinterp.storage import array_hash

    return array_hash(rows, extra=f"{model_name}|{tokenizer.__class__.__name__}|{len(tokenizer)}")
