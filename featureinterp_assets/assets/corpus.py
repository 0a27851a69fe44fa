"""The tokenized corpus every later stage reads."""

from collections.abc import Iterator

import dagster as dg

from featureinterp.data.corpus import bos_token_id, build_tokens, check_token_rows, decode_rows, tokens_hash
from featureinterp.storage import ArrayBundle
from featureinterp_assets.constants import GROUP_CORPUS, STORAGE_IO
from featureinterp_assets.resources import PresetResource


@dg.asset(
    group_name=GROUP_CORPUS,
    io_manager_key=STORAGE_IO,
    code_version="1",
    kinds={"numpy"},
    check_specs=[dg.AssetCheckSpec("rows_well_formed", asset="corpus_tokens", blocking=True)],
)
def corpus_tokens(
    context: dg.AssetExecutionContext, preset: PresetResource
) -> Iterator[dg.Output[ArrayBundle] | dg.AssetCheckResult]:
    """Token rows of the preset's corpus: BOS + 32 tokens each, never spanning two documents.

    The content hash (tokens + tokenizer) is the data version, so a changed corpus or tokenizer
    marks every downstream asset stale.
    """
    spec = preset.spec()
    tok = preset.tokenizer()
    rows = build_tokens(spec, tok)
    bos = bos_token_id(tok, spec.model.bos_token) if spec.prepend_bos else None
    digest = tokens_hash(rows, spec.model.name, tok)
    preview = decode_rows(tok, rows[:8], skip_first=spec.prepend_bos)
    yield dg.Output(
        ArrayBundle({"tokens": rows}, {"hash": digest, "preset": spec.name, "bos_id": bos}),
        metadata={
            "rows": rows.shape[0],
            "row_len": rows.shape[1],
            "content_hash": digest,
            "preview": dg.MetadataValue.md("\n".join(f"{i}. `{t!r}`" for i, t in enumerate(preview))),
        },
        data_version=dg.DataVersion(digest),
    )
    problems = check_token_rows(rows, spec.n_rows, spec.row_len, bos, tok.all_special_ids)
    yield dg.AssetCheckResult(
        check_name="rows_well_formed",
        passed=not problems,
        metadata={
            "problems": "; ".join(problems) or "none",
            "expected_shape": str((spec.n_rows, spec.row_len)),
        },
    )
