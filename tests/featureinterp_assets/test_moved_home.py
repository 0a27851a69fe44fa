"""A home ($FEATUREINTERP_HOME) moved to another folder after its values were stored keeps working
and never reads the original: stored values hold no absolute path into the home (issue 28 item 3).

Real Dagster runs of the real ``corpus_embeddings`` and ``records`` assets on the synthetic layer
SYN (no model forward pass, no SAE training), with the real tokenizer and a real LanceDB table.
The table is built beforehand under the name ``corpus_embeddings`` looks for, with cheap
deterministic vectors, so the asset reuses it instead of loading the sentence embedder.
"""

import json
import os
import zlib
from pathlib import Path

import dagster as dg
import numpy as np

from featureinterp.activations.models import load_tokenizer
from featureinterp.data.corpus import bos_token_id, decode_rows, token_rows, tokens_hash
from featureinterp.presets import get_preset
from featureinterp.retrieval.index import CorpusIndex, table_name
from featureinterp.storage import ArrayBundle, load_table
from featureinterp_assets.definitions import build_definitions
from featureinterp_assets.io_managers import StorageIOManager
from featureinterp_assets.partitions import register_layers
from featureinterp_assets.resources import PresetResource

PRESET = get_preset("embedded-tiny")
WORDS = "the state never said no to our law but we did not see it and nothing came of the police".split()


def _corpus(tokenizer, n_rows: int) -> np.ndarray:
    """``n_rows`` token rows of generated sentences; about half hold a negation word (SYN F0000)."""
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.choice(WORDS, 400)) + "." for _ in range(16)]
    bos = bos_token_id(tokenizer, PRESET.model.bos_token) if PRESET.prepend_bos else None
    return token_rows(docs, tokenizer, PRESET.seq_len, n_rows, bos, seed=0)


def _vectors(texts: list[str]) -> np.ndarray:
    """Deterministic unit vectors per text (a stand-in for the embedder; records only need some)."""
    out = np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(16) for t in texts])
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def _materialize(defs, instance, selection, **kwargs):
    result = dg.materialize(
        list(defs.assets),
        selection=selection,
        instance=instance,
        resources=defs.resources,
        raise_on_error=False,
        **kwargs,
    )
    failures = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    errors = [e.step_failure_data.error for e in failures]
    assert result.success, "\n".join(m.message for e in errors for m in (e, e.cause) if m is not None)
    return result


def test_a_moved_home_reads_its_own_table_and_never_the_original(tmp_path, model_cache, monkeypatch):
    monkeypatch.delenv("FEATUREINTERP_LANCEDB", raising=False)
    tokenizer = load_tokenizer(PRESET.model, model_cache)
    rows = _corpus(tokenizer, 160)
    preset = PRESET.replace(n_rows=len(rows))
    digest = tokens_hash(rows, preset.model.name, tokenizer)
    original, moved = tmp_path / "original", tmp_path / "moved"

    storage = StorageIOManager(base_dir=str(original / "storage" / preset.name))
    bos = bos_token_id(tokenizer, preset.model.bos_token)
    tokens = ArrayBundle({"tokens": rows}, {"hash": digest, "preset": preset.name, "bos_id": bos})
    storage.store(dg.AssetKey("corpus_tokens"), None, tokens)
    texts = decode_rows(tokenizer, rows, skip_first=preset.prepend_bos)
    name = table_name(digest, preset.embedding_model)
    CorpusIndex.build(str(original / "lancedb" / preset.name), name, texts, _vectors)

    with dg.instance_for_test() as instance:
        register_layers(instance, preset)
        defs = build_definitions(preset, home=original, models=model_cache)
        _materialize(defs, instance, ["corpus_embeddings"])
        _materialize(defs, instance, ["sae", "sae_activations"], partition_key="SYN")
        stored = (
            original / "storage" / preset.name / "corpus_embeddings" / "__all__" / "value.json"
        ).read_text()
        assert str(original) not in stored, f"an absolute path into the home is stored: {stored}"

        os.rename(original, moved)  # another disk, a container, a colleague's machine
        defs = build_definitions(preset, home=moved, models=model_cache)
        key = dg.MultiPartitionKey({"layer": "SYN", "feature": "F0000"})
        _materialize(defs, instance, ["records"], partition_key=key)

    assert not original.exists(), "the original home was recreated"
    table = load_table(moved / "storage" / preset.name / "records" / "F0000" / "SYN")
    assert len(table.frame) and table.meta["feature"] == 0
    for value in Path(moved / "storage").rglob("value.json"):
        assert str(original) not in json.dumps(json.loads(value.read_text())), value


def test_sae_folders_are_stored_relative_and_older_absolute_ones_rebased(tmp_path):
    """A trained SAE's folder is stored relative to the home; one stored as an absolute path by
    an older version (the original home's) resolves into the current home; a ``disk`` source's
    folder (the user's own, no training metrics) stays where it is."""
    home = tmp_path / "moved"
    preset = PresetResource(name="embedded-tiny", home=str(home), models_dir=str(tmp_path / "models"))
    trained = preset.sae_dir() / "L03"
    assert preset.home_relative(trained) == "storage/embedded-tiny/sae_files/L03"
    assert preset.home_relative(tmp_path / "elsewhere") == str(tmp_path / "elsewhere")

    stored = {"path": preset.home_relative(trained), "explained_variance": 0.9, "d_sae": 64}
    assert preset.sae_ref(stored).path == str(trained)
    older = stored | {"path": str(tmp_path / "original" / "storage" / "embedded-tiny" / "sae_files" / "L03")}
    assert preset.sae_ref(older).path == str(trained)
    disk = {"path": str(tmp_path / "my_saes" / "L03"), "d_sae": 64}
    assert preset.sae_ref(disk).path == disk["path"]
