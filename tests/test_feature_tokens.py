"""Feature tokens (exact top-K |cosine| against the input embedding) and LarQL's browse tier."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from vindex_hub.arch import deepseek_v4 as ds
from vindex_hub.builder import build_vindex
from vindex_hub.cli import _render_token, main
from vindex_hub.convert import convert_vindex
from vindex_hub.errors import CheckpointError, VindexFormatError
from vindex_hub.format import filenames, larql, mirror, sidecar
from vindex_hub.load import Vindex
from vindex_hub.numerics.feature_tokens import (
    UnitEmbedding,
    reference_top_abs_cosine,
    top_abs_cosine,
)
from vindex_hub.source.tokenizer import TokenDecoder
from vindex_hub.testing.synth import make_deepseek_v4_checkpoint, write_tokenizer
from vindex_hub.verify import verify_vindex
from vindex_hub.writers.browse import BrowseOptions

NUM_LAYERS, NUM_EXPERTS, HIDDEN, INTER, NUM_FEATS, VOCAB, K = 3, 4, 64, 32, 4, 300, 6
BUILT = [1, 2]  # a layer subset: layer 0 is not built


# ---- the numerics ------------------------------------------------------------------------------
@pytest.mark.slow
def test_top_k_matches_the_float64_reference_across_blocks():
    rng = np.random.default_rng(0)
    embedding = rng.standard_normal((301, 48)).astype(np.float32)
    embedding[7] = 0  # a zero row (padding): cosine 0, never a winner
    vectors = rng.standard_normal((50, 48)).astype(np.float32)
    ids, scores = top_abs_cosine(
        vectors, UnitEmbedding.of(embedding), 9, vector_block=16, vocab_block=37
    )
    want_ids, want_scores = reference_top_abs_cosine(vectors, embedding, 9)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(
        scores, want_scores, rtol=0, atol=1e-7
    )  # float64 rescored, stored float32
    assert ids.dtype == np.int32 and scores.dtype == np.float32 and 7 not in ids


def test_ties_are_broken_by_token_id():
    rng = np.random.default_rng(1)
    embedding = rng.standard_normal((200, 32)).astype(np.float32)
    row = embedding[150].copy()
    for token in (90, 12, 40):
        embedding[token] = row
    embedding[3] = -2 * row  # same |cosine|, opposite sign
    ids, scores = top_abs_cosine(row[None], UnitEmbedding.of(embedding), 5, vocab_block=16)
    assert ids[0].tolist()[:5] == [3, 12, 40, 90, 150]
    np.testing.assert_allclose(scores[0], [-1, 1, 1, 1, 1], atol=1e-6)
    np.testing.assert_array_equal(ids, reference_top_abs_cosine(row[None], embedding, 5)[0])


# ---- decoding ------------------------------------------------------------------------------------
def test_token_pieces_are_readable(tmp_path: Path):
    from tokenizers import Tokenizer

    path = write_tokenizer(tmp_path / "tokenizer.json", 400)
    decoder = TokenDecoder(path)
    vocab = Tokenizer.from_file(str(path)).get_vocab()
    assert decoder.piece(vocab["Ġthe"]) == " the"  # byte-level BPE's Ġ is the space it stands for
    assert decoder.piece(vocab["Ċ"]) == "\\n"  # control characters escaped: one printable line
    partial = next(
        t for t in vocab if t.startswith("ä") and len(t) == 1
    )  # byte 0xe4: half a character
    assert decoder.piece(vocab[partial]) == "\\xe4"
    assert decoder.piece(vocab["<|begin_of_sentence|>"]) == "<|begin_of_sentence|>"
    assert decoder.piece(10**6) == "<id 1000000>"


# ---- a build with feature tokens -------------------------------------------------------------------
@pytest.fixture(scope="module")
def browse_build(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("feature-tokens")
    reference: dict[str, np.ndarray] = {}
    checkpoint = make_deepseek_v4_checkpoint(
        root / "ckpt",
        num_layers=NUM_LAYERS,
        num_experts=NUM_EXPERTS,
        hidden_size=HIDDEN,
        moe_intermediate_size=INTER,
        vocab_size=VOCAB,
        reference=reference,
    )
    build_vindex(
        checkpoint,
        root / "vindex",
        num_feats=NUM_FEATS,
        layers=BUILT,
        device="cpu",
        progress=False,
        larql_router=True,
        browse=BrowseOptions(feature_tokens=K),
    )
    return root / "vindex", checkpoint, reference


def _vectors(folder: Path) -> np.ndarray:
    index = sidecar.VindexIndex.loads((folder / filenames.SIDECAR_JSON).read_text())
    return np.fromfile(folder / filenames.GATE_VECTORS_BIN, dtype="<f4").reshape(
        len(index.layers), index.num_experts, index.num_feats, index.hidden_size
    )


@pytest.mark.slow
def test_feature_tokens_config_is_the_float64_top_k_of_every_vector(browse_build):
    folder, checkpoint, reference = browse_build
    table = pq.read_table(folder / mirror.FEATURE_TOKENS_PARQUET)
    assert table.schema == mirror.feature_tokens_schema(K)
    assert table.num_rows == len(BUILT) * NUM_EXPERTS * NUM_FEATS
    rows = table.to_pydict()
    want_ids, want_scores = reference_top_abs_cosine(
        _vectors(folder).reshape(-1, HIDDEN), reference[ds.EMBED_TENSOR], K
    )
    np.testing.assert_array_equal(np.array(rows[mirror.COL_TOKEN_IDS]), want_ids)
    np.testing.assert_allclose(np.array(rows[mirror.COL_SCORES]), want_scores, rtol=0, atol=1e-7)
    decoder = TokenDecoder(checkpoint / filenames.TOKENIZER_JSON)
    assert rows[mirror.COL_TOKENS] == [decoder.pieces(ids) for ids in want_ids]
    assert rows[mirror.COL_LAYER][: NUM_EXPERTS * NUM_FEATS] == [BUILT[0]] * NUM_EXPERTS * NUM_FEATS
    assert rows[mirror.COL_FEATURE][: NUM_FEATS + 1] == [*range(NUM_FEATS), 0]


def test_loader_cli_card_and_verify_see_the_labels(browse_build, capsys):
    folder, _, _ = browse_build
    table = pq.read_table(folder / mirror.FEATURE_TOKENS_PARQUET).to_pylist()
    row = next(r for r in table if (r["layer"], r["expert"], r["feature"]) == (2, 3, 1))
    with Vindex.open(folder) as vx:
        features = vx.feature_tokens(2, 3)
    assert len(features) == NUM_FEATS
    assert features[1] == list(zip(row["tokens"], row["token_ids"], row["scores"]))
    assert main(["info", str(folder), "--features", "2", "3"]) == 0
    out = capsys.readouterr().out
    first_label = _render_token(row["tokens"][0], row["token_ids"][0])
    assert "layer 2, expert 3" in out and f"{first_label} {row['scores'][0]:+.3f}" in out
    assert "\\\\" not in out  # escapes are printed once (\x07), never doubled (\\x07)
    card = (folder / filenames.CARD_FILE).read_text()
    assert "## Feature tokens" in card and "not a causal claim" in card
    assert f"config_name: {mirror.CONFIG_FEATURE_TOKENS}" in card
    first = table[0]  # the card quotes layer 1, expert 0's first rows
    assert f'`"{first["tokens"][0]}"` ({first["scores"][0]:+.3f})'.replace("|", "\\|") in card
    report = verify_vindex(folder)
    assert report.ok, report.render()
    assert any(mirror.FEATURE_TOKENS_PARQUET in c for c in report.checks)


def test_verify_catches_a_damaged_feature_tokens_file(browse_build, tmp_path: Path):
    folder = Path(shutil.copytree(browse_build[0], tmp_path / "v"))
    path = folder / mirror.FEATURE_TOKENS_PARQUET
    table = pq.read_table(path)
    pq.write_table(table.slice(1), path)
    report = verify_vindex(folder)
    assert any(
        f"{mirror.FEATURE_TOKENS_PARQUET}: {table.num_rows - 1} rows, expected {table.num_rows}"
        in p
        for p in report.problems
    ), report.render()


def test_larql_browse_tier_files(browse_build):
    folder, checkpoint, reference = browse_build
    doc = json.loads((folder / filenames.LARQL_INDEX_JSON).read_text())
    assert doc["vocab_size"] == VOCAB and doc["extract_level"] == "browse"
    raw = (folder / filenames.LARQL_EMBEDDINGS_BIN).read_bytes()
    # LarQL: f32 when the size is vocab * hidden * 4, else f16
    assert len(raw) != doc["vocab_size"] * doc["hidden_size"] * 4
    decoded = np.frombuffer(raw, dtype="<f2").reshape(doc["vocab_size"], doc["hidden_size"])
    np.testing.assert_array_equal(decoded, reference[ds.EMBED_TENSOR].astype(np.float16))
    assert (folder / filenames.TOKENIZER_JSON).read_bytes() == (
        checkpoint / filenames.TOKENIZER_JSON
    ).read_bytes()
    import hashlib

    for name in (
        filenames.LARQL_EMBEDDINGS_BIN,
        filenames.TOKENIZER_JSON,
        filenames.LARQL_ROUTER_BIN,
    ):
        assert doc["checksums"][name] == hashlib.sha256((folder / name).read_bytes()).hexdigest()


def test_router_weights_with_a_layer_subset_decode_as_larql_reads_them(browse_build):
    folder, _, reference = browse_build
    doc = json.loads((folder / filenames.LARQL_INDEX_JSON).read_text())
    values = np.fromfile(folder / filenames.LARQL_ROUTER_BIN, dtype="<f4")
    e, h = doc["model_config"]["moe"]["num_experts"], doc["hidden_size"]
    assert values.size == doc["num_layers"] * (e * h + e)
    assert doc[larql.ROUTER_LAYERS] == BUILT
    for layer in range(doc["num_layers"]):  # LarQL: layer L at L * (E*H + E) values
        block = values[layer * (e * h + e) : (layer + 1) * (e * h + e)]
        weight, bias = block[: e * h].reshape(e, h), block[e * h :]
        if layer in BUILT:
            np.testing.assert_array_equal(
                weight, reference[ds.gate_tensor(ds.layer_block(layer), ds.WEIGHT)]
            )
            np.testing.assert_array_equal(
                bias, reference[ds.gate_tensor(ds.layer_block(layer), ds.ROUTER_BIAS)]
            )
        else:
            assert not block.any()


def test_convert_with_the_source_writes_the_same_labels_and_f32_embeddings(
    browse_build, tmp_path: Path
):
    folder, checkpoint, reference = browse_build
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in (filenames.GATE_VECTORS_BIN, filenames.SIDECAR_JSON):
        shutil.copy(folder / name, plain / name)
    convert_vindex(
        plain,
        source=checkpoint,
        device="cpu",
        browse=BrowseOptions(feature_tokens=K, embeddings_dtype="f32"),
    )
    assert pq.read_table(plain / mirror.FEATURE_TOKENS_PARQUET).equals(
        pq.read_table(folder / mirror.FEATURE_TOKENS_PARQUET)
    )
    raw = np.fromfile(plain / filenames.LARQL_EMBEDDINGS_BIN, dtype="<f4")
    np.testing.assert_array_equal(raw.reshape(VOCAB, HIDDEN), reference[ds.EMBED_TENSOR])
    assert verify_vindex(plain).ok


@pytest.mark.slow
def test_without_feature_tokens_the_card_says_which_larql_commands_work(
    browse_build, tmp_path: Path
):
    folder = tmp_path / "gates-only"
    build_vindex(
        browse_build[1], folder, num_feats=NUM_FEATS, layers=[1], device="cpu", progress=False
    )
    assert not (folder / filenames.LARQL_EMBEDDINGS_BIN).exists()
    assert not (folder / mirror.FEATURE_TOKENS_PARQUET).exists()
    card = (folder / filenames.CARD_FILE).read_text()
    assert (
        "`DESCRIBE`, `WALK`, `SELECT NEAREST` also need `embeddings.bin` and `tokenizer.json`"
        in card
    )
    with (
        Vindex.open(folder) as vx,
        pytest.raises(VindexFormatError, match="built without feature tokens"),
    ):
        vx.feature_tokens(1, 0)


# ---- a checkpoint without the inputs -----------------------------------------------------------------
@pytest.mark.parametrize(
    "missing, kwargs",
    [
        (ds.EMBED_TENSOR, {"include_attention": False}),
        (filenames.TOKENIZER_JSON, {"include_tokenizer": False}),
    ],
)
def test_a_checkpoint_without_embedding_or_tokenizer_is_refused_before_any_layer(
    tmp_path: Path, capsys, missing, kwargs
):
    checkpoint = make_deepseek_v4_checkpoint(
        tmp_path / "ckpt",
        num_layers=2,
        num_experts=2,
        hidden_size=64,
        moe_intermediate_size=32,
        **kwargs,
    )
    with pytest.raises(CheckpointError, match=f"needs? .*{missing}"):
        build_vindex(
            checkpoint,
            tmp_path / "out",
            num_feats=2,
            device="cpu",
            progress=False,
            browse=BrowseOptions(feature_tokens=3),
        )
    assert not (tmp_path / "out").exists()  # refused before the output folder was claimed
    code = main(
        [
            "build",
            str(checkpoint),
            "-o",
            str(tmp_path / "out2"),
            "--num-feats",
            "2",
            "--feature-tokens",
            "3",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert (
        code == 1
        and len(err.strip().splitlines()) == 1
        and missing in err
        and "Traceback" not in err
    )


# ---- every family: the embedding transformers writes ----------------------------------------------------
pytest.importorskip("transformers")
from test_families import checkpoints  # noqa: E402,F401 (the session's family checkpoints)

from family_models import CASES  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_family_names_the_embedding_transformers_saves(case, checkpoints):  # noqa: F811
    from vindex_hub.arch import get_architecture
    from vindex_hub.source.local import LocalCheckpoint

    folder = checkpoints(case.id).folder
    with LocalCheckpoint(folder) as src:
        arch = get_architecture(src.config, tensor_names=src.tensor_names())
        name = arch.embedding_tensor()
        assert name in src.tensor_names()
        assert src.tensor_info(name).shape[1] == arch.gate_shape[1]


@pytest.mark.slow
def test_a_transformers_checkpoint_gets_feature_tokens_from_its_own_embedding(
    checkpoints,  # noqa: F811 (the fixture imported above)
    tmp_path,
):
    from safetensors.numpy import load_file

    folder = Path(shutil.copytree(checkpoints("olmoe").folder, tmp_path / "olmoe"))
    write_tokenizer(folder / filenames.TOKENIZER_JSON, 300)
    build_vindex(
        folder,
        tmp_path / "v",
        num_feats=4,
        device="cpu",
        progress=False,
        browse=BrowseOptions(feature_tokens=3),
    )
    tensors = {}
    for shard in folder.glob("*.safetensors"):
        tensors.update(load_file(shard))
    embedding = tensors["model.embed_tokens.weight"].astype(np.float32)
    want_ids, _ = reference_top_abs_cosine(
        _vectors(tmp_path / "v").reshape(-1, embedding.shape[1]), embedding, 3
    )
    got = (
        pq.read_table(tmp_path / "v" / mirror.FEATURE_TOKENS_PARQUET)
        .column(mirror.COL_TOKEN_IDS)
        .to_pylist()
    )
    np.testing.assert_array_equal(np.array(got), want_ids)


def test_feature_tokens_of_a_pushed_vindex_fetch_only_their_file(
    browse_build, local_hub, hub_repo_id, tmp_path
):
    from vindex_hub.push import push_vindex

    folder = browse_build[0]
    push_vindex(folder, hub_repo_id, progress=False)
    with Vindex.open(folder) as vx:
        want = vx.feature_tokens(1, 2)
    local_hub.reset_stats()
    with Vindex.open(hub_repo_id, cache_dir=tmp_path / "cache") as vx:
        assert vx.feature_tokens(1, 2) == want
    stats = local_hub.stats()
    # The default client fetched the file whole through Xet (hf_xet reads the CAS, past the
    # server's counters): the Hub cache holds it, and none of the large files.
    (snapshot,) = (tmp_path / "cache").glob("datasets--*/snapshots/*")
    fetched = {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()}
    assert mirror.FEATURE_TOKENS_PARQUET in fetched
    assert (snapshot / mirror.FEATURE_TOKENS_PARQUET).read_bytes() == (
        folder / mirror.FEATURE_TOKENS_PARQUET
    ).read_bytes()
    for name in (filenames.GATE_VECTORS_BIN, filenames.LARQL_EMBEDDINGS_BIN):
        assert name not in fetched and stats.file(hub_repo_id, name).bytes_sent == 0


def test_more_feature_tokens_than_the_vocabulary_is_refused_by_name(browse_build, tmp_path, capsys):
    code = main(
        [
            "build",
            str(browse_build[1]),
            "-o",
            str(tmp_path / "o"),
            "--num-feats",
            "2",
            "--quiet",
            "--feature-tokens",
            str(VOCAB + 1),
        ]
    )
    err = capsys.readouterr().err
    assert (
        code == 2
        and f"--feature-tokens {VOCAB + 1} exceeds the {VOCAB} tokens of {ds.EMBED_TENSOR}" in err
    )
    assert not (tmp_path / "o").exists()
