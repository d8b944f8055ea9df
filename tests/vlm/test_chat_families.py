"""``token-reduction chat --model FOLDER`` on a saved tiny model of every family, and the prompt it builds.

Each family's tiny builder (``conftest.py``, ``qwen_models.py``, ``shuffle_models.py``,
``simple_models.py``) gives a model and processor; they are saved to a folder and the CLI loads
them back (``AutoModelForImageTextToText`` + the processor loader) and prunes two images at keep
0.5. The tiny processors have no chat template, so :func:`build_prompt`'s per-family marker is
what the processor expands: a wrong marker fails the processor's image count or the model's
placeholder count. Families whose processor cannot be reloaded here (Mistral3's needs
torchvision, SmolVLM's num2words, Gemma 4's loader needs its audio/video parts) are checked on the
prompt side only, through their in-memory processor and the wrapper.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

from token_reduction.cli.chat import chat_main
from token_reduction.vlm import build_prompt, image_marker, prune_visual_tokens
from token_reduction.selection.registry import get_method

SAVED = {  # family -> (module under tests/vlm, builder, keyword arguments)
    "llava_next": ("conftest", "build_next", {}),
    "llava_onevision": ("conftest", "build_onevision", {}),
    "qwen2_vl": ("qwen_models", "build_qwen", {"family": "qwen2_vl"}),
    "qwen2_5_vl": ("qwen_models", "build_qwen", {"family": "qwen2_5_vl"}),
    "qwen3_vl": ("qwen_models", "build_qwen", {"family": "qwen3_vl"}),
    "qwen3_5": ("qwen_models", "build_qwen", {"family": "qwen3_5"}),
    "internvl": ("shuffle_models", "build_internvl", {}),
    "idefics3": ("shuffle_models", "build_idefics3", {}),
    "llava": ("simple_models", "build_llava15", {}),
    "gemma3": ("simple_models", "build_gemma3", {}),
}
IN_MEMORY = {  # processors that cannot be saved and reloaded in this environment
    "smolvlm": ("shuffle_models", "build_idefics3", {"smol": True}),
    "mistral3": ("simple_models", "build_mistral3", {}),
    "gemma4": ("simple_models", "build_gemma4", {}),
}
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


@pytest.mark.parametrize("family", sorted(SAVED))
def test_chat_prunes_every_image_of_a_saved_model(family, pngs, tmp_path, capsys):
    bundle = builder(SAVED[family])()
    assert bundle.model.config.model_type == family
    bundle.model.save_pretrained(tmp_path)
    bundle.processor.save_pretrained(tmp_path)
    images = [arg for path in pngs for arg in ("--image", str(path))]
    argv = ["--model", str(tmp_path), "--selector", "random", *images, "--prompt", "what is in the image ?", "--keep", "0.5"]
    code = chat_main([*argv, "--max-new-tokens", "3", "--device", "cpu"])
    out = capsys.readouterr()
    assert code == 0, out.err
    counts = [COUNTS.fullmatch(line) for line in out.out.splitlines()[-2:]]  # after the answer (which may say "image")
    assert all(counts) and [(m[1], m[2]) for m in counts] == [("0", "square"), ("1", "wide")], out.out
    assert all(0 < int(m[4]) < int(m[3]) for m in counts)


@pytest.mark.parametrize("family", sorted(IN_MEMORY))
def test_prompt_of_families_whose_processor_is_not_reloadable_here(family):
    bundle = builder(IN_MEMORY[family])()
    pictures = [Image.fromarray(np.random.default_rng(seed).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)) for seed in (0, 1)]
    prompt = build_prompt(bundle.processor, "what is in the image ?", len(pictures))
    assert prompt.count(image_marker(bundle.processor)) == 2
    inputs = dict(bundle.processor(images=[pictures], text=[prompt], return_tensors="pt"))
    pruned = prune_visual_tokens(bundle.model, get_method("random"), keep=0.5)
    torch.manual_seed(0)
    out = pruned.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert out.shape[1] == pruned.last.input_ids.shape[1] + 2
    assert len(pruned.last.tokens_before) == 2
    assert all(after < before for before, after in zip(pruned.last.tokens_before, pruned.last.tokens_after))


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
