"""Hugging Face CLIP / SigLIP towers loaded through the real path-based loader."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPVisionModel, SiglipVisionModel
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from token_reduction.encoders import load_encoder
from token_reduction.encoders.geometry import patch_coverage, rasterize_boxes, render_mask
from token_reduction.encoders.hf import resolve_layer


def _images(n: int = 3, size: tuple[int, int] = (45, 61)) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(n)]


def _reference_processor(folder: Path):
    """The PIL-backed HF processor (what LLaVA's preprocessing was built on), whatever else is installed."""
    cls = CLIPImageProcessorPil if "clip" in folder.name else SiglipImageProcessorPil
    return cls.from_pretrained(folder)


def _direct(cls: type, folder: Path, pixels: torch.Tensor, eager: bool = False):
    model = cls.from_pretrained(folder, attn_implementation="eager" if eager else None).eval()
    with torch.no_grad():
        return model(pixel_values=pixels, output_hidden_states=True, output_attentions=eager)


def test_clip_drops_cls_and_takes_penultimate_layer(tiny_clip: Path) -> None:
    encoder = load_encoder(str(tiny_clip))
    assert (encoder.family, encoder.layer, encoder.patch_size) == ("clip", -2, 8)
    assert encoder.image_size == (32, 32) and encoder.grid == (4, 4)
    assert (encoder.num_tokens, encoder.dim) == (16, 32)
    pixels = encoder.preprocess(_images())
    features = encoder.encode(pixels)["features"]
    assert features.shape == (3, 16, 32)
    reference = _direct(CLIPVisionModel, tiny_clip, pixels)
    assert len(reference.hidden_states) == 4  # embeddings + 3 layers
    torch.testing.assert_close(features, reference.hidden_states[-2][:, 1:], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(features, reference.hidden_states[-1][:, 1:])


@pytest.mark.parametrize("layer", [0, 1, 3, -1, -4])
def test_layer_selects_that_hidden_state(tiny_clip: Path, layer: int) -> None:
    encoder = load_encoder(str(tiny_clip), layer=layer)
    pixels = encoder.preprocess(_images(2))
    reference = _direct(CLIPVisionModel, tiny_clip, pixels)
    torch.testing.assert_close(encoder.encode(pixels)["features"], reference.hidden_states[layer][:, 1:], rtol=1e-5, atol=1e-5)


def test_siglip_keeps_all_tokens_from_last_layer(tiny_siglip: Path) -> None:
    encoder = load_encoder(str(tiny_siglip))
    assert (encoder.family, encoder.layer, encoder.grid, encoder.dim) == ("siglip", -1, (4, 4), 32)
    pixels = encoder.preprocess(_images())
    reference = _direct(SiglipVisionModel, tiny_siglip, pixels)
    # hidden_states[-1] is before post_layernorm, as LLaVA-OneVision uses it (not last_hidden_state)
    torch.testing.assert_close(encoder.encode(pixels)["features"], reference.hidden_states[-1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("which", ["tiny_clip", "tiny_siglip"])
def test_preprocess_matches_the_hf_image_processor(which: str, request: pytest.FixtureRequest) -> None:
    folder = request.getfixturevalue(which)
    encoder = load_encoder(str(folder))
    processor = _reference_processor(folder)
    for size in [(45, 61), (70, 33), (32, 32), (20, 90)]:
        image = _images(1, size)[0]
        expected = processor(images=[image], return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(encoder.preprocess([image]), expected.float(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("which", ["tiny_clip", "tiny_siglip"])
def test_mask_geometry_follows_the_processor(which: str, request: pytest.FixtureRequest) -> None:
    """A white box drawn into the image and the same box as a mask land on the same patches."""
    folder = request.getfixturevalue(which)
    encoder = load_encoder(str(folder))
    processor = _reference_processor(folder)
    height, width, box = 40, 80, (30, 8, 62, 28)
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[box[1] : box[3], box[0] : box[2]] = 255
    pixels = processor(images=[Image.fromarray(array)], return_tensors="pt")["pixel_values"][0]
    white = pixels * torch.tensor(processor.image_std).view(3, 1, 1) + torch.tensor(processor.image_mean).view(3, 1, 1)
    seen = patch_coverage(white.mean(0, keepdim=True).clamp(0, 1), encoder.patch_size)
    mask = render_mask(rasterize_boxes([box], (height, width)), encoder.transform.geometry((height, width)))
    predicted = patch_coverage(mask[None], encoder.patch_size)
    assert (predicted - seen).abs().max() < 0.06
    assert predicted.max() > 0.5 and predicted.min() == 0


def test_clip_attention_is_cls_attention_at_that_layer(tiny_clip: Path) -> None:
    encoder = load_encoder(str(tiny_clip), attention=True)
    pixels = encoder.preprocess(_images())
    out = encoder.encode(pixels)
    attention = out["attention"]
    assert attention.shape == (3, 16) and attention.dtype == torch.float32
    total = attention.sum(dim=1)
    assert (attention >= 0).all() and (total > 0).all() and (total <= 1 + 1e-5).all()  # CLS's share on itself is excluded
    reference = _direct(CLIPVisionModel, tiny_clip, pixels, eager=True)
    # hidden_states[-2] is the output of layer index 1, whose attention is attentions[1] (== [-2])
    torch.testing.assert_close(attention, reference.attentions[-2].mean(1)[:, 0, 1:], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["features"], reference.hidden_states[-2][:, 1:], rtol=1e-5, atol=1e-5)


def test_siglip_attention_is_attention_received(tiny_siglip: Path) -> None:
    encoder = load_encoder(str(tiny_siglip), attention=True)
    pixels = encoder.preprocess(_images())
    attention = encoder.encode(pixels)["attention"]
    assert attention.shape == (3, 16)
    torch.testing.assert_close(attention.sum(dim=1), torch.ones(3), rtol=0, atol=1e-5)  # rows of softmax sum to 1
    reference = _direct(SiglipVisionModel, tiny_siglip, pixels, eager=True)
    torch.testing.assert_close(attention, reference.attentions[-1].mean(1).mean(1), rtol=1e-5, atol=1e-6)


def test_attention_needs_a_transformer_layer(tiny_clip: Path) -> None:
    with pytest.raises(ValueError, match="embedding output"):
        load_encoder(str(tiny_clip), layer=0, attention=True)


@pytest.mark.parametrize("layer", [4, -5, 100])
def test_layer_out_of_range_names_valid_range(tiny_clip: Path, layer: int) -> None:
    with pytest.raises(ValueError, match=r"out of range .*-4\.\.3"):
        load_encoder(str(tiny_clip), layer=layer)


def test_resolve_layer() -> None:
    assert resolve_layer(-2, 24, "x") == 23 and resolve_layer(-1, 27, "x") == 27 and resolve_layer(0, 3, "x") == 0
    with pytest.raises(ValueError, match="-25..24"):
        resolve_layer(25, 24, "x")


def test_unknown_hub_id_offline_gives_clear_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    with pytest.raises(ValueError) as info:
        load_encoder("nonexistent-org/nonexistent-model")
    message = str(info.value)
    assert "could not load 'nonexistent-org/nonexistent-model': no local folder of that name" in message
    assert "model hub is unreachable (offline?)" in message and "pass a local path" in message
    assert time.monotonic() - start < 5  # no network retries


def test_missing_local_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such folder"):
        load_encoder(str(tmp_path / "missing" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        load_encoder(str(tmp_path / "empty"))


def test_unsupported_model_type(tmp_path: Path) -> None:
    from transformers import BertConfig

    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'bert' model; expected a CLIP or SigLIP"):
        load_encoder(str(tmp_path))


def test_vision_tower_of_a_full_clip_checkpoint(tmp_path: Path, tiny_clip: Path) -> None:
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(1)
    vision = CLIPVisionModel.from_pretrained(tiny_clip).config.to_dict()
    text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64, bos_token_id=0, eos_token_id=1)
    model = CLIPModel(CLIPConfig(vision_config=vision, text_config=text)).eval()
    model.save_pretrained(tmp_path)
    _reference_processor(tiny_clip).save_pretrained(tmp_path)
    encoder = load_encoder(str(tmp_path))
    pixels = encoder.preprocess(_images(2))
    with torch.no_grad():
        reference = model.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    torch.testing.assert_close(encoder.encode(pixels)["features"], reference, rtol=1e-5, atol=1e-5)


def test_vision_tower_of_a_llava_next_checkpoint(tmp_path: Path) -> None:
    from tiny_models import save_tiny_llava_next
    from transformers import LlavaNextForConditionalGeneration

    folder = save_tiny_llava_next(tmp_path / "llava")
    with pytest.warns(UserWarning, match="image processor"):
        encoder = load_encoder(str(folder))
    assert encoder.layer == -2 and encoder.family == "clip"
    assert encoder.default_pinpoints == [(32, 64), (64, 32)]
    llava = LlavaNextForConditionalGeneration.from_pretrained(folder).eval()
    pixels = encoder.preprocess(_images(2))
    with torch.no_grad():
        tower = llava.model.vision_tower if hasattr(llava, "model") else llava.vision_tower
        reference = tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    torch.testing.assert_close(encoder.encode(pixels)["features"], reference, rtol=1e-5, atol=1e-5)


def test_image_size_not_a_multiple_of_the_patch(tmp_path: Path) -> None:
    """Like so400m-patch14-384 (384 = 27 * 14 + 6): the trailing pixels are dropped, not an error."""
    from tiny_models import save_tiny_siglip

    folder = save_tiny_siglip(tmp_path / "siglip36", image_size=36, patch_size=8)
    encoder = load_encoder(str(folder))
    assert encoder.image_size == (36, 36) and encoder.grid == (4, 4) and encoder.num_tokens == 16
    pixels = encoder.preprocess(_images(1))
    reference = _direct(SiglipVisionModel, folder, pixels)
    torch.testing.assert_close(encoder.encode(pixels)["features"], reference.hidden_states[-1], rtol=1e-5, atol=1e-5)
    assert patch_coverage(torch.ones(1, 36, 36), encoder.patch_size).shape == (1, 16)


def test_local_folder_without_weights_names_the_problem(tmp_path: Path, tiny_clip: Path) -> None:
    (tmp_path / "config.json").write_bytes((tiny_clip / "config.json").read_bytes())
    with pytest.raises(ValueError, match=r"could not load '.*': (?!no local folder)"):
        load_encoder(str(tmp_path))


def test_a_tower_unpickled_in_a_new_process_still_returns_its_hidden_states(tiny_clip: Path, tmp_path: Path) -> None:
    """What ``ddp_spawn`` does to the encoder: pickle it into a fresh interpreter, where transformers 5
    has not registered the tower's output recording (``hidden_states`` would come back ``None``)."""
    import pickle
    import subprocess
    import sys

    encoder = load_encoder(str(tiny_clip))
    pixels = torch.rand(1, 3, *encoder.image_size)
    (tmp_path / "encoder.pkl").write_bytes(pickle.dumps((encoder, pixels)))
    script = (
        "import pickle, sys, torch; encoder, pixels = pickle.loads(open(sys.argv[1], 'rb').read());"
        "torch.save(encoder.encode(pixels)['features'], sys.argv[2])"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "encoder.pkl"), str(tmp_path / "out.pt")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.allclose(torch.load(tmp_path / "out.pt"), encoder.encode(pixels)["features"], atol=1e-5)  # other thread count
