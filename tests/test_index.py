"""The on-disk index: exact top-k against brute force, removals and slot reuse, an interrupted
addition leaves it consistent, one writer at a time, the metadata word filter."""
import numpy as np
import pytest

from hybrid_jax import index as index_lib
from hybrid_jax import packed

WIDTH = 8
HEADER = {"model": "m", "fingerprint": "f", "fusion": "late", "width": WIDTH, "audio_dir": "/sounds"}


def record(path, vector, metadata=""):
    return index_lib.Record(path, 10, 1, metadata, 1.0, np.asarray(vector, np.float32))


def cosine(queries, vectors):
    return packed.scores("late", queries, vectors)


@pytest.fixture
def filled(tmp_path, monkeypatch):
    monkeypatch.setattr(index_lib, "BLOCK_BYTES", 40 * 4 * WIDTH)  # 40 rows per block: many blocks
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, WIDTH)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = index_lib.Index(tmp_path / "i", write=True, header=HEADER)
    index.add([record(f"f{i:03d}.wav", v, "dog bark" if i % 7 == 0 else "rain") for i, v in enumerate(vectors)])
    yield index, vectors
    index.close()


def brute_force(queries, vectors, alive, k):
    scores = cosine(queries, vectors)
    scores[:, ~alive] = -np.inf
    order = np.lexsort((np.broadcast_to(np.arange(len(vectors)), scores.shape), -scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, 1), order


def test_top_k_equals_brute_force_with_removals_and_a_row_filter(filled):
    index, vectors = filled
    queries = np.random.default_rng(1).standard_normal((3, WIDTH)).astype(np.float32)
    alive = np.ones(len(vectors), bool)
    for k in (1, 10, 299):
        scores, rows = index.search(queries, k, cosine)
        expected_scores, expected_rows = brute_force(queries, vectors, alive, k)
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_allclose(scores, expected_scores, rtol=1e-6)
    assert index.remove([f"f{i:03d}.wav" for i in range(0, 300, 3)]) == 100
    alive[::3] = False
    scores, rows = index.search(queries, 250, cosine)  # more than remain: only the 200 alive
    assert rows.shape == (3, 200) and not np.isin(rows, np.arange(0, 300, 3)).any()
    np.testing.assert_array_equal(rows, brute_force(queries, vectors, alive, 200)[1])
    dogs = index.matching(["DOG"])  # case-insensitive, removed rows excluded
    assert list(dogs) == [i for i in range(0, 300, 7) if i % 3]
    scores, rows = index.search(queries, 5, cosine, rows=np.arange(0, 300, 7))  # removed ones dropped
    assert set(rows.ravel()) <= set(dogs)


def test_ties_go_to_the_lower_row(tmp_path, monkeypatch):
    monkeypatch.setattr(index_lib, "BLOCK_BYTES", 16 * 4 * WIDTH)  # ties spread over 7 blocks
    with index_lib.Index(tmp_path / "i", write=True, header=HEADER) as index:
        same, other = np.eye(WIDTH, dtype=np.float32)[:2]
        index.add([record(f"{i}.wav", same if i % 2 else other) for i in range(100)])
        scores, rows = index.search(same[None], 5, cosine)
        assert list(rows[0]) == [1, 3, 5, 7, 9]


def test_replacing_and_removing_reuse_rows_and_keep_the_rest(filled):
    index, vectors = filled
    before = np.array(index.vectors())
    index.remove(["f010.wav", "f020.wav"])
    index.add([record("new.wav", np.ones(WIDTH) / np.sqrt(WIDTH)), record("f005.wav", -vectors[5])])
    entries = index.entries()
    assert "f010.wav" not in entries and len(index) == 299
    assert entries["new.wav"].row in (10, 20)  # a freed row, not a new one
    assert index.vectors().shape[0] == 300  # the file did not grow
    np.testing.assert_array_equal(index.vectors()[entries["f005.wav"].row], -vectors[5])
    untouched = [e.row for p, e in entries.items() if p not in ("new.wav", "f005.wav")]
    np.testing.assert_array_equal(index.vectors()[untouched], before[untouched])


def test_an_interrupted_addition_leaves_the_index_as_it_was(filled, monkeypatch):
    index, vectors = filled
    entries, version = index.entries(), index.version
    queries = vectors[:2]
    expected = index.search(queries, 5, cosine)

    def crash(*args):  # the process dies after the vectors were written, before the commit
        raise KeyboardInterrupt

    original = index._transaction
    monkeypatch.setattr(index, "_transaction", crash)
    with pytest.raises(KeyboardInterrupt):
        index.add([record("late.wav", vectors[0]), record("f001.wav", vectors[9])])
    monkeypatch.setattr(index, "_transaction", original)
    index.close()
    with index_lib.Index(index.directory) as reopened:
        assert reopened.entries() == entries and reopened.version == version
        for got, want in zip(reopened.search(queries, 5, cosine), expected):
            np.testing.assert_array_equal(got, want)
    with index_lib.Index(index.directory, write=True) as again:  # and the next run goes on
        again.add([record("late.wav", vectors[0])])
        assert len(again) == 301


def test_one_writer_at_a_time_and_readers_need_an_index(tmp_path):
    with index_lib.Index(tmp_path / "i", write=True, header=HEADER):
        with pytest.raises(index_lib.UnusableIndex, match="another indexing run"):
            index_lib.Index(tmp_path / "i", write=True)
        with index_lib.Index(tmp_path / "i") as reader:  # reading while a writer runs is fine
            assert len(reader) == 0
            with pytest.raises(index_lib.UnusableIndex, match="write=True"):
                reader.remove(["x"])
    with pytest.raises(index_lib.UnusableIndex, match="not an index"):
        index_lib.Index(tmp_path / "nothing")


def test_filter_words_are_literal_and_unicode_case_insensitive(tmp_path):
    with index_lib.Index(tmp_path / "i", write=True, header=HEADER) as index:
        index.add([record("a.wav", np.ones(WIDTH), "100% rain_drops Café"), record("b.wav", np.ones(WIDTH), "1000 rainXdrops")])
        assert list(index.matching(["100%"])) == [0]
        assert list(index.matching(["rain_drops"])) == [0]
        assert list(index.matching(["CAFÉ", "rain"])) == [0]
        assert list(index.matching(["b.wav"])) == [1]  # the path counts too
        assert list(index.matching([])) == [0, 1]
