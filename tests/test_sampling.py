"""Anchors, the four candidate samplers and the anchor / candidate files (docs/stages.md stage 3)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lever_lm.sampling import (
    SAMPLERS,
    EmbeddedSplit,
    SamplerConfig,
    anchor_candidates,
    draw_anchors,
    load_embedded_split,
    read_anchors,
    read_candidates,
    sample_candidates,
    sampler_params,
    test_pool_candidates,
    write_anchors,
    write_candidates,
)

N_TRAIN, DIM = 300, 16


def _normalised(rng, n, dim=DIM):
    matrix = rng.standard_normal((n, dim)).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def train():
    """300 questions on 150 images (1-4 questions each); questions on one image share its image embedding."""
    rng = np.random.default_rng(7)
    per_image = rng.integers(1, 5, size=400)
    image_ids = np.repeat(np.arange(400) * 10 + 5, per_image)[:N_TRAIN]
    distinct, row_to_image = np.unique(image_ids, return_inverse=True)
    image_embeddings = _normalised(rng, len(distinct))[row_to_image]
    return EmbeddedSplit(image_ids=image_ids, image=image_embeddings, text=_normalised(rng, N_TRAIN))


@pytest.fixture(scope="module")
def anchors(train):
    # Include anchors that share their image with others, so same-image exclusion is exercised.
    shared = [i for i in range(N_TRAIN) if (train.image_ids == train.image_ids[i]).sum() >= 3][:5]
    return sorted(set(draw_anchors(N_TRAIN, 25, seed=3)) | set(shared))


def _allowed_mask(train, anchor, exclude_same_image):
    allowed = np.ones(N_TRAIN, dtype=bool)
    allowed[anchor] = False
    if exclude_same_image:
        allowed &= train.image_ids != train.image_ids[anchor]
    return allowed


def _brute_force_ranking(query_vector, database, allowed):
    """Allowed ids by descending float64 inner product, ties by ascending id."""
    scores = database.astype(np.float64) @ query_vector.astype(np.float64)
    ids = np.flatnonzero(allowed)
    return ids[np.lexsort((ids, -scores[ids]))], scores


# ---------------------------------------------------------------- anchors


def test_draw_anchors_is_seeded_distinct_and_sorted():
    first = draw_anchors(1000, 100, seed=42)
    assert first == draw_anchors(1000, 100, seed=42)
    assert first != draw_anchors(1000, 100, seed=43)
    assert len(set(first)) == 100 and first == sorted(first) and 0 <= first[0] and first[-1] < 1000
    assert sorted(draw_anchors(50, 50, seed=0)) == list(range(50))
    with pytest.raises(ValueError, match="anchors.sample_num = 51"):
        draw_anchors(50, 51, seed=0)


# ---------------------------------------------------------------- invariants of all samplers


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("exclude_same_image", [True, False])
def test_candidates_are_exact_size_distinct_and_never_excluded_ids(train, anchors, sampler, exclude_same_image):
    cfg = SamplerConfig(cand_num=40, exclude_same_image=exclude_same_image, seed=5)
    result = anchor_candidates(sampler, anchors, train, cfg)
    assert list(result) == anchors
    for anchor, candidates in result.items():
        assert len(candidates) == 40 and len(set(candidates)) == 40
        assert all(isinstance(c, int) for c in candidates)
        assert _allowed_mask(train, anchor, exclude_same_image)[candidates].all(), (sampler, anchor)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_same_image_questions_are_allowed_when_the_option_is_off(train, anchors, sampler):
    with_siblings = [a for a in anchors if (train.image_ids == train.image_ids[a]).sum() >= 3]
    cfg = SamplerConfig(cand_num=150, exclude_same_image=False, seed=0)
    result = anchor_candidates(sampler, with_siblings, train, cfg)
    siblings_seen = sum(int((train.image_ids[result[a]] == train.image_ids[a]).sum()) for a in with_siblings)
    assert siblings_seen > 0
    if sampler == "img_sim_sampler":
        # Identical image embeddings score highest, so the siblings come first.
        for anchor in with_siblings:
            siblings = np.flatnonzero(train.image_ids == train.image_ids[anchor])
            expected = sorted(set(siblings.tolist()) - {anchor})
            assert sorted(result[anchor][: len(expected)]) == expected


@pytest.mark.parametrize("sampler", ["rand_sampler", "mix_sampler"])
def test_random_parts_follow_the_seed_not_the_order(train, anchors, sampler):
    cfg = SamplerConfig(cand_num=32, seed=11)
    result = anchor_candidates(sampler, anchors, train, cfg)
    assert result == anchor_candidates(sampler, anchors, train, cfg)
    # Per-query rngs: reversed order or a shard of the anchors gives the same sets.
    assert anchor_candidates(sampler, anchors[::-1], train, cfg) == result
    shard = anchors[3:9]
    assert anchor_candidates(sampler, shard, train, cfg) == {a: result[a] for a in shard}
    other = anchor_candidates(sampler, anchors, train, SamplerConfig(cand_num=32, seed=12))
    assert sum(other[a] != result[a] for a in anchors) > len(anchors) // 2


def test_rand_sampler_covers_the_allowed_ids_roughly_uniformly(train):
    cfg = SamplerConfig(cand_num=60, seed=0)
    result = anchor_candidates("rand_sampler", list(range(N_TRAIN)), train, cfg)
    counts = np.bincount(np.concatenate(list(result.values())), minlength=N_TRAIN)
    # Each id is drawn with probability about 60/297 per anchor: mean count about 60.
    assert counts.min() > 25 and counts.max() < 100 and abs(counts.mean() - 60) < 1e-9


@pytest.mark.parametrize("sampler,modality", [("text_sim_sampler", "text"), ("img_sim_sampler", "image")])
@pytest.mark.parametrize("exclude_same_image", [True, False])
def test_similarity_samplers_equal_brute_force(train, anchors, sampler, modality, exclude_same_image):
    cfg = SamplerConfig(cand_num=50, exclude_same_image=exclude_same_image)
    result = anchor_candidates(sampler, anchors, train, cfg)
    embeddings = getattr(train, modality)
    for anchor in anchors:
        ranking, scores = _brute_force_ranking(
            embeddings[anchor], embeddings, _allowed_mask(train, anchor, exclude_same_image)
        )
        got = np.array(result[anchor])
        np.testing.assert_allclose(scores[got], scores[ranking[:50]], atol=1e-6)
        # Ids agree exactly up to ties (same-image questions share an image embedding).
        assert sorted(got.tolist()) == sorted(ranking[:50].tolist()) or np.isclose(
            scores[ranking[49]], scores[ranking[50]], atol=1e-6
        )
        if modality == "text":
            assert got.tolist() == ranking[:50].tolist()


# ---------------------------------------------------------------- mix sampler


def test_mix_counts_put_the_rounding_remainder_on_random():
    assert SamplerConfig(cand_num=64).mix_counts() == (32, 16, 16)
    assert SamplerConfig(cand_num=10).mix_counts() == (6, 2, 2)
    assert SamplerConfig(cand_num=10, mix_ratios=(0.0, 0.5, 0.5)).mix_counts() == (0, 5, 5)
    with pytest.raises(ValueError, match="candidates.mix_ratios"):
        SamplerConfig(mix_ratios=(0.5, 0.5, 0.5))


def test_mix_sampler_takes_text_then_image_then_random(train, anchors):
    cfg = SamplerConfig(cand_num=64, seed=2)
    result = anchor_candidates("mix_sampler", anchors, train, cfg)
    for anchor in anchors:
        allowed = _allowed_mask(train, anchor, True)
        text_ranking, _ = _brute_force_ranking(train.text[anchor], train.text, allowed)
        image_ranking, image_scores = _brute_force_ranking(train.image[anchor], train.image, allowed)
        got = result[anchor]
        assert got[:16] == text_ranking[:16].tolist()
        image_rest = [i for i in image_ranking.tolist() if i not in got[:16]]
        # Ties among same-image siblings may order the image part differently; compare by score.
        np.testing.assert_allclose(image_scores[got[16:32]], image_scores[image_rest[:16]], atol=1e-6)
        assert not set(got[16:32]) & set(got[:16])
        assert len(set(got)) == 64 and allowed[got].all()


def test_mix_sampler_tops_up_when_text_and_image_rankings_coincide(train, anchors):
    same = EmbeddedSplit(image_ids=train.image_ids, image=train.text, text=train.text)
    cfg = SamplerConfig(cand_num=64, seed=2)
    result = anchor_candidates("mix_sampler", anchors, same, cfg)
    for anchor in anchors:
        ranking, _ = _brute_force_ranking(train.text[anchor], train.text, _allowed_mask(train, anchor, True))
        got = result[anchor]
        assert got[:32] == ranking[:32].tolist()  # image part continues down the shared ranking
        assert len(set(got)) == 64 and not set(got[32:]) & set(ranking[:32].tolist())


# ---------------------------------------------------------------- test-time pools and errors


def test_test_pool_searches_train_and_excludes_only_shared_images(train):
    rng = np.random.default_rng(9)
    val_image_ids = np.array([100000, 100001, train.image_ids[0], 100003])  # one val image collides with train
    val = EmbeddedSplit(image_ids=val_image_ids, image=_normalised(rng, 4), text=_normalised(rng, 4))
    cfg = SamplerConfig(cand_num=20)
    pools = test_pool_candidates("text_sim_sampler", val, train, cfg)
    assert list(pools) == [0, 1, 2, 3]
    for query in range(4):
        allowed = train.image_ids != val_image_ids[query]
        ranking, _ = _brute_force_ranking(val.text[query], train.text, allowed)
        assert pools[query] == ranking[:20].tolist()
    # A val query's own idx is not a train id to exclude.
    full = test_pool_candidates("rand_sampler", val, train, SamplerConfig(cand_num=N_TRAIN - 10))
    assert 0 in full[0] and not set(full[2]) & set(np.flatnonzero(train.image_ids == train.image_ids[0]))
    assert test_pool_candidates("img_sim_sampler", val, train, cfg, query_ids=[3]).keys() == {3}


def test_errors_name_the_offending_setting(train):
    with pytest.raises(ValueError, match="unknown sampler 'knn'.*rand_sampler.*mix_sampler"):
        anchor_candidates("knn", [0], train, SamplerConfig())
    with pytest.raises(ValueError, match=r"candidates.cand_num: 298 exceeds.*anchor row\(s\) 0, 1"):
        anchor_candidates("rand_sampler", [0, 1], train, SamplerConfig(cand_num=298))
    no_text = EmbeddedSplit(image_ids=train.image_ids, image=train.image)
    with pytest.raises(ValueError, match="text_sim_sampler needs text embeddings"):
        anchor_candidates("text_sim_sampler", [0], no_text, SamplerConfig(cand_num=5))
    assert len(anchor_candidates("rand_sampler", [0], no_text, SamplerConfig(cand_num=5))[0]) == 5
    with pytest.raises(ValueError, match="query ids repeated: \\[4\\]"):
        anchor_candidates("rand_sampler", [4, 4], train, SamplerConfig(cand_num=5))
    with pytest.raises(ValueError, match="out of range"):
        sample_candidates("rand_sampler", [N_TRAIN], train, train, SamplerConfig(cand_num=5), exclude_self=True)


def test_config_from_the_candidates_section():
    cfg = SamplerConfig.from_config(
        {
            "cand_num": 64,
            "exclude_same_image": True,
            "seed": 0,
            "mix_ratios": {"random": 0.5, "text": 0.25, "image": 0.25},
        }
    )
    assert cfg == SamplerConfig()
    with pytest.raises(ValueError, match="unknown config key candidates.k"):
        SamplerConfig.from_config({"cand_num": 64, "k": 3})


# ---------------------------------------------------------------- files


def test_anchor_and_candidate_files_roundtrip(tmp_path, train, anchors):
    write_anchors(tmp_path / "anchors.json", anchors, {"sample_num": len(anchors), "seed": 3})
    loaded = read_anchors(tmp_path / "anchors.json")
    assert loaded.anchors == anchors and loaded.params == {"sample_num": len(anchors), "seed": 3}

    cfg = SamplerConfig(cand_num=12)
    mapping = anchor_candidates("mix_sampler", anchors, train, cfg)
    params = sampler_params("mix_sampler", cfg, encoder_id="tiny:abc")
    path = tmp_path / "cands" / "mix_sampler.json"
    write_candidates(path, mapping, params)
    loaded = read_candidates(path)
    assert loaded.candidates == mapping and loaded.params == params
    assert params["mix_ratios"] == {"random": 0.5, "text": 0.25, "image": 0.25}
    assert json.loads(path.read_text())["candidates"][str(anchors[0])] == mapping[anchors[0]]


def test_bad_candidate_data_is_rejected_with_the_query_id(tmp_path):
    path = tmp_path / "c.json"
    with pytest.raises(ValueError, match="offending query ids \\['7'\\]"):
        write_candidates(path, {3: [1, 2], 7: [4, 4]}, {"cand_num": 2})
    with pytest.raises(ValueError, match="offending query ids \\['3'\\]"):
        write_candidates(path, {3: [1, 2, 5]}, {"cand_num": 2})
    assert not path.exists()
    path.write_text(json.dumps({"params": {"cand_num": 2}, "candidates": {"5": [1, "x"]}}))
    with pytest.raises(ValueError, match="c.json: query id 5"):
        read_candidates(path)
    path.write_text(json.dumps({"anchors": [1]}))
    with pytest.raises(ValueError, match="c.json: expected"):
        read_anchors(path)
    with pytest.raises(ValueError, match="repeated ids \\[2\\]"):
        write_anchors(tmp_path / "a.json", [2, 2], {})


def test_prebuilt_indexes_from_files_give_the_same_candidates(tmp_path, train, anchors):
    from lever_lm.index import build_flat_ip_index, read_index, write_index

    write_index(tmp_path / "image.faiss", build_flat_ip_index(train.image))
    write_index(tmp_path / "text.faiss", build_flat_ip_index(train.text))
    with_indexes = EmbeddedSplit(
        train.image_ids,
        train.image,
        train.text,
        image_index=read_index(tmp_path / "image.faiss"),
        text_index=read_index(tmp_path / "text.faiss"),
    )
    cfg = SamplerConfig(cand_num=30)
    for sampler in SAMPLERS:
        assert anchor_candidates(sampler, anchors, with_indexes, cfg) == anchor_candidates(sampler, anchors, train, cfg)
    with pytest.raises(ValueError, match="text index: 300 x 16 does not match"):
        EmbeddedSplit(train.image_ids, train.image, train.text[:, :8], text_index=with_indexes.text_index)


def test_load_embedded_split_from_stored_artifacts(tmp_path, train):
    import pandas as pd

    from lever_lm.embeddings import EmbeddingResult, embedding_paths, save_embeddings
    from lever_lm.index import build_flat_ip_index, write_index

    records = pd.DataFrame(
        dict(
            idx=np.arange(N_TRAIN),
            split="train",
            question_id=np.arange(N_TRAIN) * 7,
            image_id=train.image_ids,
            image_path=[f"img{i}.jpg" for i in train.image_ids],
            question="what?",
            answers=[["a"] * 10] * N_TRAIN,
            label="a",
        )
    )
    records.to_parquet(tmp_path / "train.parquet", index=False)
    meta = dict(
        encoder_id="tiny:abc", encoder_name="clip", dim=DIM, n=N_TRAIN, split="train", normalized=True, dtype="float32"
    )
    paths = embedding_paths(tmp_path, "train")
    save_embeddings(paths, EmbeddingResult(image=train.image, text=train.text, meta=meta))
    write_index(tmp_path / "text.faiss", build_flat_ip_index(train.text))
    loaded = load_embedded_split(
        tmp_path / "train.parquet", paths.image, paths.text, text_index_path=tmp_path / "text.faiss"
    )
    assert loaded.encoder_id == "tiny:abc" and np.array_equal(loaded.image_ids, train.image_ids)
    assert loaded.text_index.ntotal == N_TRAIN and loaded.image_index is None
    cfg = SamplerConfig(cand_num=20)
    assert anchor_candidates("mix_sampler", [0, 5, 9], loaded, cfg) == anchor_candidates(
        "mix_sampler", [0, 5, 9], train, cfg
    )

    records.iloc[:-1].to_parquet(tmp_path / "short.parquet", index=False)
    with pytest.raises(ValueError, match="short.parquet: 299 records but .*train.meta.json says n = 300"):
        load_embedded_split(tmp_path / "short.parquet", paths.image, paths.text)
    other = EmbeddedSplit(train.image_ids[:4], train.image[:4], train.text[:4], encoder_id="tiny:zzz")
    with pytest.raises(ValueError, match="different encoders"):
        test_pool_candidates("text_sim_sampler", other, loaded, cfg)


def test_cand_num_errors_name_question_ids():
    from lever_lm.errors import InputError
    from lever_lm.sampling import check_cand_num_fits

    # 6 train questions on 3 images (2 each): an anchor may use at most 6 - 2 = 4 ids
    image_ids, question_ids = [1, 1, 2, 2, 3, 3], [10, 11, 20, 21, 30, 31]
    check_cand_num_fits(image_ids, question_ids, 4, True, "train.parquet")
    with pytest.raises(
        InputError,
        match=r"cand_num: 5 exceeds .* train.parquet .*at most 4 fits.* "
        r"6 question_id\(s\) 10, 11, 20, 21, 30, \.\.\. \(1 more\)",
    ):
        check_cand_num_fits(image_ids, question_ids, 5, True, "train.parquet")
    check_cand_num_fits(image_ids, question_ids, 5, False, "train.parquet")
    train = EmbeddedSplit(image_ids=image_ids, question_ids=question_ids)
    with pytest.raises(InputError, match=r"for 6 anchor question_id\(s\) 10, 11"):
        anchor_candidates("rand_sampler", range(6), train, SamplerConfig(cand_num=5))
