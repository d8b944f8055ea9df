"""``extract --encoder PATH`` for a VLM checkpoint: the cache holds exactly what its pruning wrapper shows the selector.

Tiny random checkpoints of every family are saved (model + image processor) into folders and
extracted offline. Equality is ``torch.equal`` at ``--dtype fp32`` with one image per tower call
(``batch_size=1``); a batch of several images goes through the tower in one call, which may round
differently in the last bits (checked with a 1e-5 tolerance).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from PIL import Image
from vlm.conftest import build_next, build_onevision
from vlm.qwen_models import IMAGE, build_qwen
from vlm.shuffle_models import build_idefics3, build_internvl
from vlm.simple_models import build_gemma3, build_gemma4, build_llava15, build_llava_pixtral, build_mistral3, gemma4_inputs, random_image

from token_reduction.cache.feature_cache import FeatureCache
from token_reduction.cli.extract import extract_main
from token_reduction.encoders import load_encoder
from token_reduction.encoders.vlm import vlm_checkpoint
from token_reduction.extraction.run import extract
from token_reduction.models.backbone import TrunkConfig
from token_reduction.models.selector import TokenSelector
from token_reduction.selection.base import resolve_budget
from token_reduction.vlm import prune_visual_tokens
from token_reduction.vlm.families import wrapper_for

GENERATE = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False)
SIZES = [(20, 37), (16, 16), (40, 23)]  # (height, width): wide, square, tall


@dataclass(frozen=True)
class Case:
    build: Callable[[], Any]
    token: str  # the image marker in a prompt
    canvas: bool = False

    def inputs(self, bundle: Any, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """What the family's processor gives for one prompt per image (the way users call the model)."""
        prompts = [f"user : {self.token} what is in the image ?" for _ in images]
        if self.token == "<image_soft_token>":
            return gemma4_inputs(bundle, prompts, images)
        batch = [[image] for image in images]  # the images of each prompt
        return dict(bundle.processor(images=batch, text=prompts, return_tensors="pt", padding=True))


CASES = {
    "qwen2_vl": Case(lambda: build_qwen("qwen2_vl"), IMAGE, canvas=True),
    "qwen2_5_vl": Case(lambda: build_qwen("qwen2_5_vl"), IMAGE, canvas=True),
    "qwen3_vl": Case(lambda: build_qwen("qwen3_vl"), IMAGE, canvas=True),
    "qwen3_5": Case(lambda: build_qwen("qwen3_5"), IMAGE, canvas=True),
    "internvl": Case(build_internvl, "<IMG_CONTEXT>"),
    "idefics3": Case(build_idefics3, "<image>"),
    "smolvlm": Case(lambda: build_idefics3(smol=True), "<image>"),
    "gemma3": Case(build_gemma3, "<start_of_image>"),
    "gemma4": Case(build_gemma4, "<image_soft_token>", canvas=True),
    "mistral3": Case(build_mistral3, "[IMG]", canvas=True),
    "llava_pixtral": Case(build_llava_pixtral, "[IMG]", canvas=True),
}
TOWERS = {"onevision": build_onevision, "next": build_next, "llava15": build_llava15}
"""LLaVA checkpoints with a CLIP/SigLIP tower: extracted by the tower path of encoders/hf.py, as before."""


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for i, (height, width) in enumerate(SIZES):
        random_image(height, width, seed=i + 1).save(folder / f"img{i}.png")
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Any, Path]]:
    """``name -> (bundle, folder)``: the tiny model and its image processor saved once per module."""
    saved: dict[str, tuple[Any, Path]] = {}

    def get(name: str) -> tuple[Any, Path]:
        if name not in saved:
            bundle = CASES[name].build() if name in CASES else TOWERS[name]()
            folder = tmp_path_factory.mktemp(name)
            bundle.model.save_pretrained(folder)
            bundle.processor.image_processor.save_pretrained(folder)
            saved[name] = bundle, folder
        return saved[name]

    return get


def stored_by_image(cache: FeatureCache) -> dict[str, tuple[list[Any], torch.Tensor]]:
    """Per image: its samples' crops and stacked features, in cache order."""
    rows: dict[str, list[int]] = {}
    for index, sample in enumerate(cache.samples):
        rows.setdefault(sample["image"], []).append(index)
    return {
        image: ([cache.samples[i]["crop"] for i in found], torch.stack([cache.read(i)["features"] for i in found]))
        for image, found in rows.items()
    }


def canvas_image(image: Image.Image, canvas: list[int] | None, resample: int) -> Image.Image:
    return image if canvas is None else image.resize((canvas[1], canvas[0]), resample=resample)


def test_qwen_and_internvl_folders_are_detected_llava_towers_are_not(checkpoints: Callable) -> None:
    _, qwen = checkpoints("qwen2_5_vl")
    _, onevision = checkpoints("onevision")
    assert vlm_checkpoint(str(qwen)) == (qwen, None, "qwen2_5_vl")
    assert vlm_checkpoint(f"{qwen}@56x112") == (qwen, (56, 112), "qwen2_5_vl")
    assert vlm_checkpoint(str(onevision)) is None  # its SigLIP tower path (encoders/hf.py) stays as it was
    assert vlm_checkpoint("pixels:16") is None


@pytest.mark.parametrize("name", list(CASES))
def test_cache_holds_exactly_what_the_wrapper_shows_the_selector(name: str, checkpoints: Callable, images: Path, tmp_path: Path) -> None:
    bundle, folder = checkpoints(name)
    case = CASES[name]
    manifest = extract(str(folder), images, tmp_path / "cache", dtype="fp32", batch_size=1, progress=False)
    assert manifest.complete and manifest.skipped == []
    info = manifest.info
    assert info["model_type"] == bundle.model.config.model_type and info["features"] and info["family"]
    assert f"[{info['model_type']}: " in manifest.encoder  # so feature_source names the checkpoint and the features
    assert (info["canvas"] is not None) == case.canvas
    wrapper = wrapper_for(bundle.model)(bundle.model, TokenSelector(manifest.dim, TrunkConfig(width=16, depth=1, heads=2)))
    resample = bundle.processor.image_processor.resample
    for rel, (crops, stored) in stored_by_image(FeatureCache(tmp_path / "cache")).items():
        image = canvas_image(Image.open(images / rel).convert("RGB"), info["canvas"], resample)
        inputs = case.inputs(bundle, [image])
        expected = wrapper.selector_features(**inputs)
        assert wrapper.selector_grids(**inputs) == [tuple(manifest.grid)] * len(expected)
        assert stored.shape == (len(expected), manifest.num_tokens, manifest.dim) and len(crops) == len(expected)
        assert torch.equal(stored, torch.stack(expected)), f"{rel}: cache differs from selector_features"
    if name in ("internvl", "idefics3"):  # tiles row by row, then the whole image
        assert stored_by_image(FeatureCache(tmp_path / "cache"))["img0.png"][0][-1] in ("thumbnail", "global")


@pytest.mark.parametrize("name", ["mistral3", "internvl"])
def test_batched_tower_calls_match_within_rounding(name: str, checkpoints: Callable, images: Path, tmp_path: Path) -> None:
    _, folder = checkpoints(name)
    one = extract(str(folder), images, tmp_path / "one", dtype="fp32", batch_size=1, progress=False)
    many = extract(str(folder), images, tmp_path / "many", dtype="fp32", batch_size=8, progress=False)
    assert one.num_samples == many.num_samples
    a, b = stored_by_image(FeatureCache(tmp_path / "one")), stored_by_image(FeatureCache(tmp_path / "many"))
    for rel in a:
        assert a[rel][0] == b[rel][0]
        torch.testing.assert_close(a[rel][1], b[rel][1], rtol=0, atol=1e-5)


def test_two_processes_and_worker_processes_store_what_one_process_does(checkpoints: Callable, images: Path, tmp_path: Path) -> None:
    """ddp_spawn pickles the encoder into each rank (Mistral3 reads hidden_states, which transformers 5 only
    records for models registered in that process); DataLoader workers run the processor."""
    _, folder = checkpoints("mistral3")
    one = extract(str(folder), images, tmp_path / "one", dtype="fp32", batch_size=1, num_workers=2, progress=False)
    two = extract(str(folder), images, tmp_path / "two", dtype="fp32", batch_size=1, progress=False,
                  accelerator="cpu", devices=2, strategy="ddp_spawn")  # fmt: skip
    assert two.complete and {shard.rank for shard in two.shards} == {0, 1} and two.num_samples == one.num_samples == 3
    a, b = stored_by_image(FeatureCache(tmp_path / "one")), stored_by_image(FeatureCache(tmp_path / "two"))
    assert list(a) == list(b)
    for rel in a:  # other processes may run other thread counts: rounding only
        torch.testing.assert_close(a[rel][1], b[rel][1], rtol=0, atol=1e-5)


class RecordingSelector(TokenSelector):
    """A TokenSelector that records the grid of every call."""

    def select(self, features: torch.Tensor, keep: Any = None, **kwargs: Any) -> Any:
        self.grids = [*getattr(self, "grids", []), kwargs.get("grid")]
        return super().select(features, keep, **kwargs)


@pytest.mark.parametrize("name", list(CASES))
def test_a_selector_for_the_cache_plugs_into_the_model(name: str, checkpoints: Callable, images: Path, tmp_path: Path) -> None:
    """Built for the cache's dim and grid, it prunes at keep 0.5 inside generate, on the model's native grids too."""
    bundle, folder = checkpoints(name)
    manifest = extract(str(folder), images, tmp_path / "cache", dtype="fp16", progress=False)
    torch.manual_seed(0)
    selector = RecordingSelector(manifest.dim, TrunkConfig(width=16, depth=1, heads=2), grid=tuple(manifest.grid)).eval()
    pruned = prune_visual_tokens(bundle.model, selector, keep=0.5)
    pictures = [random_image(24, 40, seed=7), random_image(32, 32, seed=8)]  # native sizes: other grids than a canvas
    out = pruned.generate(**CASES[name].inputs(bundle, pictures), **GENERATE)
    assert out.shape[0] == 2
    last = pruned.last
    assert all(after < before for before, after in zip(last.tokens_before, last.tokens_after))
    if CASES[name].canvas:
        assert any(tuple(grid) != tuple(manifest.grid) for grid in selector.grids)


def test_selector_trained_on_the_canvas_runs_on_other_grids(checkpoints: Callable, tmp_path: Path) -> None:
    """Fit on a Qwen2.5-VL canvas cache, export, load, prune native-size images at keep 0.5 and adaptively."""
    from token_reduction.cli.train import lightning_main

    bundle, folder = checkpoints("qwen2_5_vl")
    pictures = tmp_path / "images"
    pictures.mkdir()
    for i in range(12):
        random_image(16 + 8 * (i % 3), 16 + 8 * (i % 4), seed=20 + i).save(pictures / f"p{i:02d}.png")
    manifest = extract(f"{folder}@48x48", pictures, tmp_path / "cache", dtype="fp32", progress=False)
    assert tuple(manifest.grid) == (6, 6) and manifest.info["canvas"] == [48, 48]
    root = Path(__file__).resolve().parents[2]
    cli = lightning_main([
        "fit", "--config", str(root / "lightning_configs" / "tiny_cpu.yaml"), "--data.cache_dir", str(tmp_path / "cache"),
        "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.logger.init_args.save_dir", str(tmp_path / "run"),
        "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "1",
    ])  # fmt: skip
    selector = TokenSelector.from_pretrained(Path(cli.trainer.log_dir) / "selector")
    assert selector.dim == manifest.dim and tuple(selector.grid) == (6, 6)
    assert selector.info["feature_source"].startswith(f"{folder}@48x48 [qwen2_5_vl: merged tokens")
    pruned = prune_visual_tokens(bundle.model, selector, keep=0.5)
    inputs = CASES["qwen2_5_vl"].inputs(bundle, [random_image(32, 48, seed=3), random_image(24, 24, seed=4)])  # grids 4x6, 3x3
    assert pruned.generate(**inputs, **GENERATE).shape[0] == 2
    assert pruned.last.tokens_after == [resolve_budget(0.5, 24), resolve_budget(0.5, 9)]  # of 4x6 and 3x3 merged tokens
    adaptive = prune_visual_tokens(bundle.model, selector, keep=None)
    assert adaptive.generate(**inputs, **GENERATE).shape[0] == 2


def test_text_boxes_follow_the_processor_tiles(checkpoints: Callable, tmp_path: Path) -> None:
    """InternVL cuts a 16x32 page into two tiles + a thumbnail: a box on the left half covers only tile r0c0 (and the thumbnail's left)."""
    import json

    _, folder = checkpoints("internvl")
    pages = tmp_path / "pages"
    pages.mkdir()
    Image.new("RGB", (32, 16), "white").save(pages / "page.png")
    (pages / "page.json").write_text(json.dumps({"boxes": [[0, 0, 16, 16]]}))
    manifest = extract(str(folder), pages, tmp_path / "cache", dtype="fp32", progress=False)
    cache = FeatureCache(tmp_path / "cache")
    assert manifest.extras == {"text": [16]} and [s["crop"] for s in cache.samples] == [[0, 0], [0, 1], "thumbnail"]
    assert [s["crop_box"] for s in cache.samples] == [[0, 0, 16, 16], [16, 0, 32, 16], [0, 0, 32, 16]]
    text = torch.stack([cache.read(i, ("text",))["text"] for i in range(3)]).float().view(3, 4, 4)
    assert torch.equal(text[0], torch.ones(4, 4)) and torch.equal(text[1], torch.zeros(4, 4))
    torch.testing.assert_close(text[2], torch.tensor([1.0, 1, 0, 0]).expand(4, 4), rtol=0, atol=0.05)  # antialiased shrink: soft edge


@pytest.mark.parametrize("name", list(TOWERS))
def test_llava_tower_path_matches_its_wrapper(name: str, checkpoints: Callable, images: Path, tmp_path: Path) -> None:
    """LLaVA-OneVision / NeXT / 1.5 keep the tower path (NeXT/OV with --anyres: base + tiles); same tokens as the wrapper's crops.

    That path normalises pixels in another arithmetic order than the HF processor (3.6e-7 apart),
    so fp32 features agree to ~2e-6, not bit for bit; fp16/bf16 storage rounds far coarser.
    """
    bundle, folder = checkpoints(name)
    tiled = name != "llava15"
    manifest = extract(str(folder), images, tmp_path / "cache", dtype="fp32", anyres=tiled, progress=False)
    wrapper = wrapper_for(bundle.model)(bundle.model, TokenSelector(manifest.dim, TrunkConfig(width=16, depth=1, heads=2)))
    for rel, (crops, stored) in stored_by_image(FeatureCache(tmp_path / "cache")).items():
        inputs = dict(bundle.processor.image_processor(images=[Image.open(images / rel).convert("RGB")], return_tensors="pt"))
        expected = torch.stack(wrapper.selector_features(**inputs))
        assert crops[0] == ("base" if tiled else "full") and stored.shape == expected.shape and manifest.dim == wrapper.feature_dim
        assert {tuple(g) for g in wrapper.selector_grids(**inputs)} == {tuple(manifest.grid)}
        torch.testing.assert_close(stored, expected, rtol=0, atol=1e-5)


def test_command_line_with_a_canvas_resumes_and_refuses_what_does_not_apply(
    checkpoints: Callable, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _, qwen = checkpoints("qwen2_5_vl")
    _, internvl = checkpoints("internvl")

    def run(encoder: str, out: str, *extra: str) -> int:
        args = ["--encoder", encoder, "--images", str(images), "--out", str(tmp_path / out), "--no-progress", "--num-workers", "0"]
        return extract_main([*args, *extra])

    assert run(f"{qwen}@32x64", "cache") == 0
    manifest = FeatureCache(tmp_path / "cache").manifest
    assert tuple(manifest.grid) == (4, 8) and manifest.num_samples == 3
    assert run(str(qwen), "cache") == 2  # the default canvas gives other features: refused, nothing changed
    assert "different features" in capsys.readouterr().err
    assert run(f"{qwen}@32x64", "cache") == 0  # the same command again: nothing left to do
    assert FeatureCache(tmp_path / "cache").manifest.num_samples == 3
    for extra in (["--layer", "-2"], ["--anyres"], ["--store-attention"]):
        assert run(str(qwen), "other", *extra) == 2
        assert extra[0] in capsys.readouterr().err
    with pytest.raises(ValueError, match="fixed size"):
        load_encoder(f"{internvl}@32x32")
