"""CLIP encoders (tiny, open_clip from a local file, hf_clip from a local dir) and record embeddings."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lever_lm.data import DatasetError
from lever_lm.embeddings import (
    ClipEncoderConfig,
    TinyClipDims,
    build_clip_encoder,
    compute_record_embeddings,
    embedding_paths,
    load_embeddings,
    save_embeddings,
    tiny_model_name,
)

DIMS = TinyClipDims(
    embed_dim=24,
    image_size=32,
    patch_size=8,
    width=32,
    layers=1,
    heads=2,
    text_width=32,
    text_layers=1,
    text_heads=2,
    context_length=24,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_cfg():
    return ClipEncoderConfig(name="clip_tiny", kind="tiny", tiny=DIMS, seed=3, batch_size=4)


@pytest.fixture(scope="module")
def tiny_encoder(tiny_cfg):
    return build_clip_encoder(tiny_cfg)


def _image(seed: int, size=(40, 30)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _records(tmp_path, image_of_row: list[int], questions: list[str] | None = None) -> pd.DataFrame:
    rows = []
    for idx, image_number in enumerate(image_of_row):
        path = tmp_path / f"img{image_number}.png"
        if not path.exists():
            _image(image_number).save(path)
        question = questions[idx] if questions else f"what is in picture {image_number} number {idx}?"
        rows.append(
            dict(
                idx=idx,
                split="train",
                question_id=1000 + idx,
                image_id=image_number,
                image_path=str(path),
                question=question,
                answers=["a"] * 10,
                label=f"label {idx}",
            )
        )
    return pd.DataFrame(rows)


def test_tiny_encoder_is_deterministic_normalised_and_sized(tiny_cfg, tiny_encoder):
    images = [_image(1), _image(2, size=(64, 20)), _image(3)]
    texts = ["what color is the bus?", "how many dogs are there?", ""]
    first_images, first_texts = tiny_encoder.encode_images(images), tiny_encoder.encode_texts(texts)
    again = build_clip_encoder(tiny_cfg)
    assert np.array_equal(again.encode_images(images), first_images)
    assert np.array_equal(again.encode_texts(texts), first_texts)
    assert first_images.shape == (3, DIMS.embed_dim) and first_texts.shape == (3, DIMS.embed_dim)
    assert tiny_encoder.dim == DIMS.embed_dim
    assert first_images.dtype == np.float32 and first_texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first_images, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(first_texts, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(first_images[0], first_images[1])
    assert not np.allclose(first_texts[0], first_texts[1])


def test_tiny_encoder_id_and_weights_follow_the_seed(tiny_cfg, tiny_encoder):
    other = build_clip_encoder(ClipEncoderConfig(name="clip_tiny", kind="tiny", tiny=DIMS, seed=4, batch_size=4))
    assert tiny_encoder.encoder_id.startswith("tiny:")
    assert other.encoder_id != tiny_encoder.encoder_id
    texts = ["is it raining?"]
    assert not np.allclose(other.encode_texts(texts), tiny_encoder.encode_texts(texts))


def test_building_an_encoder_leaves_the_global_torch_rng_alone(tiny_cfg):
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_clip_encoder(tiny_cfg)
    assert torch.equal(torch.rand(3), expected)


def test_record_embeddings_encode_each_distinct_image_once(tmp_path, tiny_cfg, tiny_encoder):
    # 7 records on 4 images, batch size 4, so batching and the row -> image mapping both matter.
    image_of_row = [0, 1, 1, 2, 0, 3, 1]
    records = _records(tmp_path, image_of_row)
    encoded_images = []
    original = tiny_encoder.encode_images

    def counting(images):
        encoded_images.extend(images)
        return original(images)

    tiny_encoder.encode_images = counting
    try:
        result = compute_record_embeddings(records, tiny_cfg, num_threads=1, encoder=tiny_encoder)
    finally:
        del tiny_encoder.encode_images
    assert len(encoded_images) == 4
    assert result.image.shape == (7, DIMS.embed_dim) and result.text.shape == (7, DIMS.embed_dim)
    for row, image_number in enumerate(image_of_row):
        alone = tiny_encoder.encode_images([_image(image_number)])[0]
        np.testing.assert_allclose(result.image[row], alone, atol=1e-5)
    assert np.array_equal(result.image[1], result.image[2]) and np.array_equal(result.image[1], result.image[6])
    np.testing.assert_allclose(result.text, tiny_encoder.encode_texts(records["question"].tolist()), atol=1e-5)
    assert result.meta == {
        "encoder_id": tiny_encoder.encoder_id,
        "encoder_name": "clip_tiny",
        "dim": DIMS.embed_dim,
        "n": 7,
        "n_distinct_images": 4,
        "split": "train",
        "normalized": True,
        "dtype": "float32",
    }


def test_caption_records_embed_the_label_when_the_question_is_empty(tmp_path, tiny_cfg, tiny_encoder):
    records = _records(tmp_path, [0, 1], questions=["", "what is this?"])
    result = compute_record_embeddings(records, tiny_cfg, encoder=tiny_encoder)
    expected = tiny_encoder.encode_texts(["label 0", "what is this?"])
    np.testing.assert_allclose(result.text, expected, atol=1e-5)


def test_record_errors_name_the_problem(tmp_path, tiny_cfg, tiny_encoder):
    records = _records(tmp_path, [0, 1])
    missing_image = records.assign(image_path=[records.image_path[0], str(tmp_path / "nope.png")])
    with pytest.raises(DatasetError, match=r"1 image file\(s\) missing .*nope.png \(question_id 1001\)"):
        compute_record_embeddings(missing_image, tiny_cfg, encoder=tiny_encoder)
    with pytest.raises(ValueError, match="one split"):
        compute_record_embeddings(records.assign(split=["train", "val"]), tiny_cfg, encoder=tiny_encoder)
    with pytest.raises(ValueError, match="question_id \\[1001\\]"):
        compute_record_embeddings(records.assign(question=["q", ""], label=["l", ""]), tiny_cfg, encoder=tiny_encoder)


def test_save_and_load_roundtrip_and_validation(tmp_path, tiny_cfg, tiny_encoder):
    records = _records(tmp_path, [0, 1, 0])
    result = compute_record_embeddings(records, tiny_cfg, encoder=tiny_encoder)
    paths = embedding_paths(tmp_path / "emb", "train")
    save_embeddings(paths, result)
    assert paths.image.name == "train.image.npy" and paths.meta.name == "train.meta.json"
    loaded = load_embeddings(paths)
    assert np.array_equal(loaded.image, result.image) and np.array_equal(loaded.text, result.text)
    assert loaded.meta == result.meta
    np.save(paths.text, result.text[:2])
    with pytest.raises(ValueError, match="train.text.npy"):
        load_embeddings(paths)


def test_open_clip_loads_a_local_checkpoint_and_names_a_missing_one(tmp_path, tiny_cfg, tiny_encoder):
    import torch

    with pytest.raises(FileNotFoundError, match="encoders.clip_vit_l14.checkpoint"):
        build_clip_encoder(
            ClipEncoderConfig(
                name="clip_vit_l14", kind="open_clip", model_name="ViT-L-14", checkpoint=str(tmp_path / "missing.pt")
            )
        )
    # The tiny architecture is registered with open_clip, so its weights can go through the file path.
    weights = tmp_path / "tiny.pt"
    torch.save(tiny_encoder.model.state_dict(), weights)
    loaded = build_clip_encoder(
        ClipEncoderConfig(
            name="clip_file", kind="open_clip", model_name=tiny_model_name(DIMS, 3), checkpoint=str(weights)
        )
    )
    assert loaded.encoder_id.startswith(f"open_clip:{tiny_model_name(DIMS, 3)}:")
    images, texts = [_image(5)], ["where is the cat?"]
    np.testing.assert_allclose(loaded.encode_images(images), tiny_encoder.encode_images(images), atol=1e-6)
    np.testing.assert_allclose(loaded.encode_texts(texts), tiny_encoder.encode_texts(texts), atol=1e-6)


def test_hf_clip_errors_name_the_key_and_the_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="encoders.clip_b32.checkpoint"):
        build_clip_encoder(ClipEncoderConfig(name="clip_b32", kind="hf_clip", checkpoint=str(tmp_path / "absent")))
    folder = tmp_path / "partial"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json.*model.safetensors"):
        build_clip_encoder(ClipEncoderConfig(name="clip_b32", kind="hf_clip", checkpoint=str(folder)))


def _write_tiny_hf_clip(folder) -> None:
    """A real transformers CLIPModel with tiny dims and a character-level CLIP BPE vocabulary (no merges)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    folder.mkdir()
    characters = list(bytes_to_unicode().values())
    vocab = {token: i for i, token in enumerate(characters + [c + "</w>" for c in characters])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=40,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)


def test_hf_clip_from_a_local_directory(tmp_path):
    folder = tmp_path / "tiny_hf_clip"
    _write_tiny_hf_clip(folder)
    cfg = ClipEncoderConfig(name="clip_hf", kind="hf_clip", checkpoint=str(folder), batch_size=2)
    encoder = build_clip_encoder(cfg)
    assert encoder.dim == 16 and encoder.encoder_id.startswith("hf_clip:tiny_hf_clip:")
    images = [_image(1), _image(2), _image(1)]
    image_features = encoder.encode_images(images)
    text_features = encoder.encode_texts(["what is it?", "a much longer question " * 5, "what is it?"])
    assert image_features.shape == (3, 16) and text_features.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(image_features, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(image_features[0], image_features[2], atol=1e-5)
    np.testing.assert_allclose(text_features[0], text_features[2], atol=1e-5)
    assert build_clip_encoder(cfg).encoder_id == encoder.encoder_id


def test_config_from_mapping_rejects_unknown_keys():
    cfg = ClipEncoderConfig.from_config("clip_tiny_l", {"kind": "tiny", "seed": 1, "tiny": {"embed_dim": 16}})
    assert cfg.tiny.embed_dim == 16 and cfg.seed == 1
    with pytest.raises(ValueError, match=r"unknown config key encoders\.clip_tiny_l\.colour"):
        ClipEncoderConfig.from_config("clip_tiny_l", {"kind": "tiny", "colour": "red"})
    with pytest.raises(ValueError, match="encoders.x.kind"):
        ClipEncoderConfig(name="x", kind="resnet")
