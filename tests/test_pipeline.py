"""Grain training loader and evaluation data: shapes, determinism, sharding, resume, order, TFDS path."""
import json

import jax
import numpy as np
import pytest
from dataset_files import (
    CLOTHO_CAPTION_HEADER,
    CLOTHO_METADATA_HEADER,
    clotho_metadata,
    fake_tokenize,
    write_audio,
    write_csv,
)
from jax.sharding import PartitionSpec

from hybrid_jax.data.eval_data import eval_data
from hybrid_jax.data.pipeline import TrainLoader, to_global
from hybrid_jax.data.prepare import preparation
from hybrid_jax.data.records import CachedSplit, ConcatSplit, InMemorySplit, open_split

RATE = 32000
CLIP_SECONDS = 0.5  # window of 16000 samples in these tests


def ramp_clip(index: int, samples: int) -> np.ndarray:
    """Audio whose every sample says where it came from: clip index * 1000 + position // 16."""
    return (index * 1000 + np.arange(samples) // 16).astype(np.int16)


@pytest.fixture(scope="module")
def data():
    lengths = [8000, 16000, 24000, 40000, 12000, 16000, 30000]
    captions = [[f"clip {i} caption {j}" for j in range(n)] for i, n in enumerate([5, 5, 1, 2, 3, 4, 5])]
    keywords = [["birds", "rain"], [], ["car"], ["dog", "bark"], [], ["wind"], ["water"]]
    return InMemorySplit([ramp_clip(i, n) for i, n in enumerate(lengths)], captions, keywords)


def loader(data, **kw):
    args = dict(global_batch_size=4, clip_seconds=CLIP_SECONDS, seed=3, num_epochs=2, process_index=0, process_count=1)
    return TrainLoader(data, fake_tokenize, **(args | kw))


def batches(it, n):
    return [next(it) for _ in range(n)]


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_shapes_and_dtypes(data):
    batch = next(iter(loader(data)))
    expected = {"audio": ((4, 16000), np.int16), "audio_valid": ((4,), np.float32), "meta_present": ((4,), bool),
                "item_id": ((4,), np.int32)}
    for key in ("query", "meta"):
        for part in ("ids", "mask", "types"):
            expected[f"{key}_{part}"] = ((4, 8), np.int32)
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected


def test_epoch_covers_pairs_and_crops_are_real_slices(data):
    lo = loader(data, num_epochs=1)
    assert lo.num_pairs == 25 and lo.steps_per_epoch == 6
    seen = []
    for batch in lo:
        for row in range(4):
            item, audio, valid = batch["item_id"][row], batch["audio"][row], batch["audio_valid"][row]
            n = int(data.num_samples[item])
            assert valid == pytest.approx(min(n, 16000) / 16000)
            clip = data.audio(item)
            if n <= 16000:
                np.testing.assert_array_equal(audio[:n], clip)
                assert not audio[n:].any()  # zero padding
            else:  # a random window inside the clip
                offsets = [o for o in range(n - 16000 + 1) if audio[0] == clip[o] and np.array_equal(audio, clip[o : o + 16000])]
                assert offsets
            seen.append(int(batch["query_ids"][row, 1]) * 100 + int(batch["query_ids"][row, 3]))
    assert len(seen) == 24 and len(set(seen)) == 24  # 6 full batches, no pair twice (1 dropped)


def test_same_seed_same_batches_other_seed_other_order(data):
    a, b = batches(iter(loader(data)), 4), batches(iter(loader(data)), 4)
    for x, y in zip(a, b):
        assert_same(x, y)
    c = batches(iter(loader(data, seed=4)), 4)
    assert any(not np.array_equal(x["query_ids"], y["query_ids"]) for x, y in zip(a, c))


def test_epochs_are_reshuffled(data):
    lo = loader(data)
    first, second = (np.concatenate([lo.batch(e * lo.steps_per_epoch + k)["item_id"] for k in range(6)]) for e in (0, 1))
    assert not np.array_equal(first, second)
    assert sum(1 for _ in lo) == 2 * lo.steps_per_epoch


def caption_owners(data, tokenize) -> dict[tuple, int]:
    """Token ids of each caption -> its clip, from the split's captions alone (not the loader)."""
    owners = {}
    for clip, captions in enumerate(data.captions):
        for caption in captions:
            owners[tuple(tokenize([caption])["input_ids"][0])] = clip
    assert len(owners) == sum(len(c) for c in data.captions)  # the ids identify each caption
    return owners


@pytest.mark.parametrize("process_count", [1, 2])
def test_every_rows_query_is_a_caption_of_its_item(data, process_count):
    """The contrastive signal: in every row of every batch the query caption belongs to the clip
    named by item_id (and by the audio and metadata, checked in the tests above), across epochs
    and for each process's rows; each pair appears at most once per epoch."""
    owners = caption_owners(data, fake_tokenize)
    loaders = [loader(data, process_index=p, process_count=process_count, num_epochs=3) for p in range(process_count)]
    for epoch in range(3):
        seen = set()
        for k in range(loaders[0].steps_per_epoch):
            parts = [lo.batch(epoch * lo.steps_per_epoch + k) for lo in loaders]
            queries = np.concatenate([b["query_ids"] for b in parts])
            items = np.concatenate([b["item_id"] for b in parts])
            for query, item in zip(queries, items):
                assert owners[tuple(query)] == item
                seen.add(tuple(query))
        assert len(seen) == loaders[0].steps_per_epoch * 4


def test_resume_from_json_state_gives_identical_batches(data):
    it = iter(loader(data))
    batches(it, 4)
    state = json.loads(json.dumps(it.get_state()))
    expected = batches(it, 5)  # crosses into the second epoch
    resumed = iter(loader(data))
    resumed.set_state(state)
    for x, y in zip(expected, batches(resumed, 5)):
        assert_same(x, y)


def test_two_processes_read_disjoint_halves_of_the_same_global_batch(data):
    whole = loader(data)
    halves = [loader(data, process_index=p, process_count=2) for p in range(2)]
    assert halves[0].batch_size == 2
    for step in range(8):
        parts = [h.batch(step) for h in halves]
        glued = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        assert_same(glued, whole.batch(step))
    with pytest.raises(ValueError, match="divisible"):
        loader(data, process_count=3)


def test_keyword_metadata_and_dropout(data):
    lo = loader(data, metadata="keywords", num_epochs=1)
    for batch in lo:
        for row, item in enumerate(batch["item_id"]):
            assert batch["meta_present"][row] == bool(data.keywords[item])
            expected = fake_tokenize([" ".join(data.keywords[item])])["input_ids"][0]
            np.testing.assert_array_equal(batch["meta_ids"][row], expected if batch["meta_present"][row] else 0)
    dropped = loader(data, metadata="keywords", metadata_dropout=1.0)
    assert not any(b["meta_present"].any() or b["meta_mask"].any() for b in [dropped.batch(s) for s in range(6)])
    some = loader(data, metadata="keywords", metadata_dropout=0.5, num_epochs=50)
    rate = np.mean([some.batch(s)["meta_present"][some.batch(s)["item_id"] == 0].mean() for s in range(300) if (some.batch(s)["item_id"] == 0).any()])
    assert 0.3 < rate < 0.7
    with pytest.raises(ValueError, match="labels"):
        loader(data, metadata="labels")


def test_caption_metadata_is_another_caption_of_the_same_clip(data):
    lo = loader(data, metadata="caption", num_epochs=20)
    tokens = fake_tokenize([c for caps in data.captions for c in caps])["input_ids"]
    owners = np.repeat(np.arange(len(data)), [len(c) for c in data.captions])
    for step in range(20 * lo.steps_per_epoch):
        batch = lo.batch(step)
        for row, item in enumerate(batch["item_id"]):
            assert batch["meta_present"][row] == (len(data.captions[item]) >= 2)
            if batch["meta_present"][row]:
                assert not np.array_equal(batch["meta_ids"][row], batch["query_ids"][row])
                (match,) = np.flatnonzero((tokens == batch["meta_ids"][row]).all(axis=1))
                assert owners[match] == item


def test_no_metadata(data):
    batch = loader(data, metadata="none").batch(0)
    assert not batch["meta_present"].any() and not batch["meta_ids"].any()


def test_eval_data_order_completeness_and_padding(data):
    ev = eval_data(data, fake_tokenize, clip_seconds=CLIP_SECONDS, metadata="keywords")
    assert ev.num_clips == 7 and ev.num_queries == 25
    assert ev.captions == [c for caps in data.captions for c in caps]  # exact text, in order
    np.testing.assert_array_equal(ev.caption_item, np.repeat(np.arange(7), [5, 5, 1, 2, 3, 4, 5]))
    clips = list(ev.clip_batches(4))
    assert len(clips) == 2 and clips[1]["is_real"].tolist() == [True, True, True, False]
    ids = np.concatenate([b["item_id"] for b in clips])
    np.testing.assert_array_equal(ids, [0, 1, 2, 3, 4, 5, 6, -1])
    for batch in clips:
        for row, item in enumerate(batch["item_id"]):
            if item < 0:
                assert not batch["audio"][row].any() and batch["audio_valid"][row] == 0
                continue
            n = min(int(data.num_samples[item]), 16000)
            np.testing.assert_array_equal(batch["audio"][row, :n], data.audio(item)[:n])  # from the start
            assert batch["meta_present"][row] == bool(data.keywords[item])
    queries = list(ev.query_batches(8))
    assert len(queries) == 4 and queries[-1]["is_real"].sum() == 1
    assert np.concatenate([q["caption_item"] for q in queries]).tolist()[:26] == ev.caption_item.tolist() + [-1]
    halves = [list(ev.clip_batches(4, process_index=p, process_count=2)) for p in range(2)]
    glued = np.concatenate([np.concatenate([a["item_id"], b["item_id"]]) for a, b in zip(*halves)])
    np.testing.assert_array_equal(glued, ids)


def test_eval_caption_metadata_variants_never_show_the_query(data):
    ev = eval_data(data, fake_tokenize, clip_seconds=CLIP_SECONDS, metadata="caption")
    assert ev.meta_ids.shape == (5, 7, 8)
    for q in range(ev.num_queries):
        item, variant = ev.caption_item[q], ev.query_variant[q]
        if ev.meta_present[variant, item]:
            assert not np.array_equal(ev.meta_ids[variant, item], ev.query_ids[q])
    assert not ev.meta_present[:, 2].any()  # clip 2 has a single caption


def test_to_global_shards_over_the_mesh(data):
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    batch = loader(data, global_batch_size=8).batch(0)
    out = to_global(batch, mesh, PartitionSpec("data"))
    assert out["audio"].dtype == np.int16 and out["audio"].shape == (8, 16000)
    assert len(out["audio"].sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(out["query_ids"]), batch["query_ids"])


def test_concat_and_cached_splits(data):
    both = ConcatSplit([data, data])
    assert len(both) == 14 and np.array_equal(both.audio(9), data.audio(2))
    cached = CachedSplit(data, progress=False)
    assert all(np.array_equal(cached.audio(i), data.audio(i)) for i in range(len(data)))
    assert_same(loader(cached).batch(3), loader(data).batch(3))


def test_tfds_path_matches_prepared_audio(tmp_path):
    src = tmp_path / "src"
    names = [f"clip{i}.wav" for i in range(4)]
    for i, name in enumerate(names):
        write_audio(src / "development" / name, 0.25 + 0.25 * i, rate=RATE, freq=200 + 100 * i)
    write_csv(src / "clotho_captions_development.csv", CLOTHO_CAPTION_HEADER,
              [[n] + [f"{n} says {k}" for k in range(5)] for n in names])
    write_csv(src / "clotho_metadata_development.csv", CLOTHO_METADATA_HEADER, [clotho_metadata(n) for n in names])
    preparation.prepare("clotho", src, tmp_path / "out")
    split = open_split("clotho", tmp_path / "out", "train")
    reference = {split.file_names[i]: split.audio(i).copy() for i in range(len(split))}
    import tensorflow_datasets as tfds

    decoded = tfds.data_source("clotho", data_dir=str(tmp_path / "out"), split="train", download=False)
    for i in range(len(split)):  # the zero-copy parser agrees with TFDS's own decoding
        np.testing.assert_array_equal(decoded[i]["audio"], split.audio(i))
    lo = TrainLoader(split, fake_tokenize, global_batch_size=4, clip_seconds=0.5, metadata="keywords", seed=0,
                     num_epochs=1, process_index=0, process_count=1)
    owners = caption_owners(split, fake_tokenize)
    for batch in lo:
        for row, item in enumerate(batch["item_id"]):
            assert owners[tuple(batch["query_ids"][row])] == item  # "<its file name> says k"
            clip = reference[split.file_names[item]]
            n = min(len(clip), 16000)
            if len(clip) <= 16000:
                np.testing.assert_array_equal(batch["audio"][row, :n], clip)
            assert batch["meta_present"][row]


def test_real_tokenizer_on_minilm_vocab(data):
    text = pytest.importorskip("hybrid_jax.models.text")
    try:
        tokenizer = text.Tokenizer.from_pretrained(text.minilm_package_dir())
    except (ModuleNotFoundError, FileNotFoundError) as e:  # the optional package may be absent
        pytest.skip(f"MiniLM vocabulary not available: {e}")
    lo = TrainLoader(data, tokenizer.tokenize, global_batch_size=4, clip_seconds=CLIP_SECONDS,
                     metadata="keywords", process_index=0, process_count=1)
    batch = lo.batch(0)
    assert batch["query_ids"].shape == (4, 32) and batch["query_ids"].dtype == np.int32
    assert (batch["query_ids"][:, 0] == 101).all()  # [CLS]
    owners = caption_owners(data, tokenizer.tokenize)  # each row: one of its own clip's captions
    assert [owners[tuple(q)] for q in batch["query_ids"]] == batch["item_id"].tolist()


WORKER_SCRIPT = """
import json, sys
import numpy as np
from absl import app

def main(_):
    sys.path.insert(0, {tests!r})
    from dataset_files import fake_tokenize
    from hybrid_jax.data.pipeline import TrainLoader
    from hybrid_jax.data.records import InMemorySplit
    data = InMemorySplit([np.arange(n, dtype=np.int16) for n in [8000, 20000, 16000, 4000]],
                         [[f"c{{i}} {{j}}" for j in range(3)] for i in range(4)], [["a"]] * 4)
    kw = dict(global_batch_size=4, clip_seconds=0.5, seed=1, num_epochs=2, process_index=0, process_count=1)
    plain = [b for b in TrainLoader(data, fake_tokenize, **kw)]
    it = iter(TrainLoader(data, fake_tokenize, worker_count=2, **kw))
    first = [next(it) for _ in range(2)]
    state = json.loads(json.dumps(it.get_state()))
    resumed = iter(TrainLoader(data, fake_tokenize, worker_count=2, **kw))
    resumed.set_state(state)
    rest = list(resumed)
    same = all(np.array_equal(a[k], b[k]) for a, b in zip(plain, first + rest) for k in a)
    print("RESULT", same, len(plain), len(first + rest))

if __name__ == "__main__":
    app.run(main)
"""


def test_worker_processes_give_the_same_batches_and_resume(tmp_path):
    import pathlib

    from commands import run_python  # this checkout's hybrid_jax in the subprocess

    script = tmp_path / "workers.py"
    script.write_text(WORKER_SCRIPT.format(tests=str(pathlib.Path(__file__).parent)))
    result = run_python(str(script))
    assert "RESULT True 6 6" in result.stdout, result.stderr[-3000:]
