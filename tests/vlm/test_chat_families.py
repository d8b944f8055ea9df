"""``token-reduction chat --model FOLDER`` on a saved tiny model of every family, and the prompt it builds.

Each family's tiny builder (``conftest.py``, ``qwen_models.py``, ``shuffle_models.py``,
``simple_models.py``) gives a model and processor; they are saved to a folder the way a checkpoint
is (``processor_class`` names transformers' own class, SmolVLM and Gemma 4 list a video processor)
and the CLI loads them back (``AutoModelForImageTextToText`` + the processor loader) and prunes two
images at keep 0.5. Without torchvision (and num2words) ``AutoProcessor`` cannot build most of these
processors, so every family also exercises :func:`~token_reduction.vlm.processors.load_processor`'s
rebuild from the image processor and tokenizer. The tiny processors have no chat template, so
:func:`build_prompt`'s per-family marker is what the processor expands: a wrong marker fails the
processor's image count or the model's placeholder count.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

from token_reduction.cli.chat import chat_main
from token_reduction.vlm import build_prompt, image_marker, processors
from token_reduction.vlm.processors import importable_processor_class, load_processor

SAVED = {  # family -> (module under tests/vlm, builder, keyword arguments)
    "llava_next": ("conftest", "build_next", {}),
    "llava_onevision": ("conftest", "build_onevision", {}),
    "qwen2_vl": ("qwen_models", "build_qwen", {"family": "qwen2_vl"}),
    "qwen2_5_vl": ("qwen_models", "build_qwen", {"family": "qwen2_5_vl"}),
    "qwen3_vl": ("qwen_models", "build_qwen", {"family": "qwen3_vl"}),
    "qwen3_5": ("qwen_models", "build_qwen", {"family": "qwen3_5"}),
    "internvl": ("shuffle_models", "build_internvl", {}),
    "idefics3": ("shuffle_models", "build_idefics3", {}),
    "smolvlm": ("shuffle_models", "build_idefics3", {"smol": True}),
    "llava": ("simple_models", "build_llava15", {}),
    "llava_pixtral": ("simple_models", "build_llava_pixtral", {}),
    "mistral3": ("simple_models", "build_mistral3", {}),
    "gemma3": ("simple_models", "build_gemma3", {}),
    "gemma4": ("simple_models", "build_gemma4", {}),
}
WITHOUT_TORCHVISION = pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is not None, reason="AutoProcessor builds these processors whole with torchvision"
)
VIDEO_PROCESSORS = {"smolvlm": "SmolVLMVideoProcessor", "gemma4": "Gemma4VideoProcessor"}  # in their checkpoints
COUNTS = re.compile(r"image (\d) \((\w+)\.png\): (\d+) -> (\d+) visual tokens \(\d+% kept\)")


def builder(spec: tuple[str, str, dict[str, Any]]) -> Callable[[], Any]:
    """The tiny builder named by ``spec``; skips when its module (another helper's) is not there yet."""
    module, name, kwargs = spec
    try:
        found = getattr(importlib.import_module(f"vlm.{module}"), name)
    except (ImportError, AttributeError) as err:
        pytest.skip(f"tests/vlm/{module}.py has no {name}: {err}")
    return lambda: found(**kwargs)


@pytest.fixture(scope="module")
def pngs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A square and a wide image (different grids in every family)."""
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for name, (height, width), seed in (("square", (32, 32), 0), ("wide", (24, 40), 1)):
        pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.png")
        paths.append(folder / f"{name}.png")
    return paths


def save_checkpoint(bundle: Any, folder: Path, family: str) -> Path:
    """``bundle`` saved like a hub checkpoint: transformers' own processor class named, video processor listed.

    Mistral3's / Pixtral's test processor only mimics ``PixtralProcessor`` (which transformers hides
    without torchvision): the real class is built from its parts and saved instead.
    """
    bundle.model.save_pretrained(folder)
    processor = bundle.processor
    if not hasattr(processor, "save_pretrained"):
        pixtral = importable_processor_class("PixtralProcessor")
        processor = pixtral(
            image_processor=processor.image_processor, tokenizer=processor.tokenizer,
            patch_size=processor.patch_size, spatial_merge_size=processor.spatial_merge_size,
        )  # fmt: skip
    processor.save_pretrained(folder)
    config = json.loads((folder / "processor_config.json").read_text())
    config["processor_class"] = config["processor_class"].removeprefix("ImageOnly")
    (folder / "processor_config.json").write_text(json.dumps(config))
    if family in VIDEO_PROCESSORS:
        video = {"video_processor_type": VIDEO_PROCESSORS[family], "processor_class": config["processor_class"]}
        (folder / "video_preprocessor_config.json").write_text(json.dumps(video))
    return folder


def chat_argv(folder: Path, pngs: list[Path]) -> list[str]:
    images = [arg for path in pngs for arg in ("--image", str(path))]
    return ["--model", str(folder), "--selector", "random", *images, "--prompt", "what is in the image ?", "--keep", "0.5",
            "--max-new-tokens", "3", "--device", "cpu"]  # fmt: skip


@pytest.mark.parametrize("family", sorted(SAVED))
def test_chat_prunes_every_image_of_a_saved_model(family, pngs, tmp_path, capsys):
    bundle = builder(SAVED[family])()
    assert bundle.model.config.model_type == family.removesuffix("_pixtral")
    code = chat_main(chat_argv(save_checkpoint(bundle, tmp_path, family), pngs))
    out = capsys.readouterr()
    assert code == 0, out.err
    counts = [COUNTS.fullmatch(line) for line in out.out.splitlines()[-2:]]  # after the answer (which may say "image")
    assert all(counts) and [(m[1], m[2]) for m in counts] == [("0", "square"), ("1", "wide")], out.out
    assert all(0 < int(m[4]) < int(m[3]) for m in counts)


@WITHOUT_TORCHVISION
@pytest.mark.parametrize("family", ["smolvlm", "gemma4", "mistral3"])
def test_processors_needing_torchvision_are_rebuilt_from_their_image_parts(family, tmp_path):
    """The reloaded processor is transformers' own class and expands prompts as the in-memory one does."""
    bundle = builder(SAVED[family])()
    processor = load_processor(save_checkpoint(bundle, tmp_path, family))
    assert type(processor).__name__.removeprefix("ImageOnly") == PROCESSOR_MAPPING_NAMES[family]
    assert processor.get_attributes() == ["image_processor", "tokenizer"]
    assert processor.tokenizer.padding_side == "left"
    pictures = [Image.fromarray(np.random.default_rng(seed).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)) for seed in (0, 1)]
    prompt = build_prompt(processor, "what is in the image ?", len(pictures))
    assert prompt.count(image_marker(processor)) == 2
    reloaded = processor(images=[pictures], text=[prompt], return_tensors="pt")
    original = bundle.processor(images=[pictures], text=[build_prompt(bundle.processor, "what is in the image ?", 2)], return_tensors="pt")
    assert reloaded["input_ids"].tolist() == original["input_ids"].tolist()
    torch.testing.assert_close(reloaded["pixel_values"], original["pixel_values"])


def test_smolvlm_is_built_without_num2words_and_leaves_transformers_as_it_was(tmp_path):
    from transformers.models.smolvlm import processing_smolvlm

    before = processing_smolvlm.num2words
    load_processor(save_checkpoint(builder(SAVED["smolvlm"])(), tmp_path, "smolvlm"))
    assert processing_smolvlm.num2words is before


@WITHOUT_TORCHVISION
def test_a_processor_that_cannot_be_built_is_one_line_naming_the_package(pngs, tmp_path, capsys, monkeypatch):
    folder = save_checkpoint(builder(SAVED["mistral3"])(), tmp_path, "mistral3")

    def unavailable(name: str) -> type:
        raise ImportError(f"\n{name} requires the Torchvision library but it was not found in your environment.\nSee ...")

    monkeypatch.setattr(processors, "importable_processor_class", unavailable)
    capsys.readouterr()  # the save's progress bar
    code = chat_main(chat_argv(folder, pngs))
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "PixtralProcessor needs the optional package torchvision: pip install torchvision" in err


# ------------------------------------------------------------------------------------ build_prompt
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_5"])
def test_qwen_images_get_their_vision_start_and_end(family):
    bundle = builder(SAVED[family])()
    processor, config = bundle.processor, bundle.model.config
    prompt = build_prompt(processor, "what is in the image ?", 2)
    assert prompt == "<|vision_start|><|image_pad|><|vision_end|>\n" * 2 + "what is in the image ?"
    pictures = [Image.new("RGB", (32, 32)), Image.new("RGB", (40, 24))]
    ids = processor(images=[pictures], text=[prompt], return_tensors="pt")["input_ids"][0].tolist()
    runs = [i for i in range(len(ids)) if ids[i] == config.image_token_id and (i == 0 or ids[i - 1] != config.image_token_id)]
    ends = [i for i in range(len(ids)) if ids[i] == config.image_token_id and (i + 1 == len(ids) or ids[i + 1] != config.image_token_id)]
    assert len(runs) == 2
    assert all(ids[start - 1] == config.vision_start_token_id for start in runs)
    assert all(ids[end + 1] == config.vision_end_token_id for end in ends)
    # markers the user wrote count as images and are not doubled
    assert build_prompt(processor, "<|vision_start|><|image_pad|><|vision_end|> what", 1) == "<|vision_start|><|image_pad|><|vision_end|> what"


def test_a_chat_template_places_the_images_itself():
    bundle = builder(SAVED["qwen2_5_vl"])()
    processor = bundle.processor
    processor.chat_template = (  # Qwen2-VL's template, reduced to its image and text parts
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% for content in message['content'] %}{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
        "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    prompt = build_prompt(processor, "<|vision_start|><|image_pad|><|vision_end|> what is it ?", 2)
    marker = "<|vision_start|><|image_pad|><|vision_end|>"
    assert prompt == f"<|im_start|>user\n{marker}{marker}what is it ?<|im_end|>\n<|im_start|>assistant\n"
