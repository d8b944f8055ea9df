"""Videos through the pruning wrapper of a tiny LLaVA-OneVision: per-frame and temporal selection."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from vlm.builders import KeepFirst

from token_reduction.cli.chat import chat_main
from token_reduction.vlm import prune_visual_tokens
from token_reduction.vlm.processors import load_processor
from token_reduction.vlm.video import (
    build_video_prompt,
    frames_to_pixels,
    prune_video_tokens,
    tokens_per_frame,
    video_inputs,
    video_placeholders,
)
from token_reduction.selection import get_method
from token_reduction.selection.base import TokenSelection, selection_from_mask
from token_reduction.extraction.video_frames import frame_files, read_frames, uniform_indices

FRAMES = 4
PER_FRAME = 4  # 16x16 frames of 4x4 patches: a 4x4 grid, pooled 2x2 -> 2x2


class Recorder(KeepFirst):
    """KeepFirst that remembers what it was shown."""

    def __init__(self):
        self.calls = []

    def select(self, features, keep=None, **kwargs) -> TokenSelection:
        self.calls.append((features.clone(), kwargs.get("grid")))
        return super().select(features, keep, **kwargs)


class FixedCounts:
    """Adaptive: crop (frame) ``i`` keeps its first ``counts[i]`` tokens."""

    name = "fixed_counts"

    def __init__(self, counts):
        self.counts = counts

    def select(self, features, keep=None, *, padding_mask=None, extras=None, grid=None, generator=None) -> TokenSelection:
        limit = torch.tensor(self.counts)
        return selection_from_mask(features, torch.arange(features.shape[1])[None] < limit[:, None])


def video_pixels(seed: int = 0, static: bool = False, batch: int = 1) -> torch.Tensor:
    pixels = torch.randn(batch, FRAMES, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    if static:
        pixels[:, 1:] = pixels[:, :1]
    return pixels


def video_batch(bundle, videos: torch.Tensor, text: str = "what is in the image ?", images=None) -> dict:
    """Prompts with each video's ``<video>`` marker expanded (the test processor has no video processor)."""
    tokenizer = bundle.processor.tokenizer
    count = video_placeholders(bundle.model.config, videos.shape[1])
    run = " ".join(["<video>"] * count)
    prompts = [f"user : {run} {text}" for _ in range(videos.shape[0])]
    if images is None:
        inputs = dict(tokenizer(prompts, return_tensors="pt", padding=True))
    else:  # the processor expands <image>; the video run is spliced in right after it
        inputs = bundle.inputs([images], [f"user : <image> {text}"])
        ids = inputs["input_ids"][0]
        after = int((ids == bundle.model.config.image_token_id).nonzero().max()) + 1
        run_ids = torch.full((count,), bundle.model.config.video_token_id)
        inputs["input_ids"] = torch.cat([ids[:after], run_ids, ids[after:]])[None]
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    inputs["pixel_values_videos"] = videos
    return inputs


def test_placeholder_count_matches_the_model():
    from token_reduction.vlm.video import pooled_grid

    class Config:
        class vision_config:
            image_size, patch_size = 384, 14

    assert pooled_grid(Config) == (14, 14) and tokens_per_frame(Config) == 196
    assert video_placeholders(Config, 8) == 8 * 196 + 1


@pytest.mark.parametrize("temporal", [False, True])
def test_keep_all_reproduces_the_unpatched_model(onevision_bundle, make_selector, temporal):
    inputs = video_batch(onevision_bundle, video_pixels())
    pruned = prune_video_tokens(onevision_bundle.model, make_selector(), keep=1.0, temporal=temporal)
    with torch.no_grad():
        expected = onevision_bundle.model(**inputs).logits
        actual = pruned(**inputs).logits
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert pruned.last.video_tokens_before == pruned.last.video_tokens_after == [FRAMES * PER_FRAME + 1]
    assert torch.equal(pruned.last.input_ids, inputs["input_ids"])
    generated = pruned.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert torch.equal(generated, onevision_bundle.model.generate(**inputs, max_new_tokens=4, do_sample=False))


@pytest.mark.parametrize("temporal", [False, True])
def test_pruned_video_shrinks_the_input_by_exactly_the_dropped_count(onevision_bundle, make_selector, temporal):
    inputs = video_batch(onevision_bundle, video_pixels(seed=1))
    video_id = onevision_bundle.model.config.video_token_id
    pruned = prune_visual_tokens(onevision_bundle.model, make_selector(), keep=0.5)
    prepared = pruned.prepare(**inputs, temporal=temporal)
    (clip,) = prepared.videos
    assert clip.temporal is temporal and clip.frames_before == [PER_FRAME] * FRAMES
    assert sum(clip.frames_after) == FRAMES * PER_FRAME // 2  # the same total in both modes
    if not temporal:
        assert clip.frames_after == [PER_FRAME // 2] * FRAMES
    assert clip.after == sum(clip.frames_after) + 1  # the trailing newline stays
    dropped = clip.before - clip.after
    assert prepared.input_ids.shape[1] == inputs["input_ids"].shape[1] - dropped
    assert int((prepared.input_ids == video_id).sum()) == clip.after
    assert prepared.images == [] and "image" not in prepared.mm_encoder_outputs
    out = pruned.generate(**inputs, temporal=temporal, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape == (1, prepared.input_ids.shape[1] + 3)
    assert pruned.temporal is False  # per-call values do not stick


def test_the_selector_reads_the_pooled_frame_grid_and_the_llm_gets_the_models_own_tokens(onevision_bundle):
    videos = video_pixels(seed=2)
    inputs = video_batch(onevision_bundle, videos)
    recorder = Recorder()
    pruned = prune_visual_tokens(onevision_bundle.model, recorder, keep=2)
    prepared = pruned.prepare(**inputs)
    features, grid = recorder.calls[-1]
    inner = onevision_bundle.model.model
    with torch.no_grad():
        tower = inner.vision_tower(videos.flatten(0, 1), output_hidden_states=True).hidden_states[-1]
        expected = inner.apply_pooling(tower)
        own = inner.get_video_features(videos, return_dict=True).pooler_output[0]
    assert grid == (2, 2) and features.shape == (FRAMES, PER_FRAME, tower.shape[-1])
    torch.testing.assert_close(features, expected)
    # KeepFirst keeps tokens 0 and 1 of every frame: the model's own pooled tokens at those places.
    own_frames = own[:-1].view(FRAMES, PER_FRAME, -1)
    torch.testing.assert_close(prepared.videos[0].features[:-1], own_frames[:, :2].reshape(-1, own.shape[-1]))
    torch.testing.assert_close(prepared.videos[0].features[-1], own[-1])


def test_temporal_mode_gives_static_frames_fewer_tokens(onevision_bundle, make_selector):
    inputs = video_batch(onevision_bundle, video_pixels(seed=3, static=True))
    pruned = prune_video_tokens(onevision_bundle.model, make_selector(), keep=0.5, temporal=True)
    clip = pruned.prepare(**inputs).videos[0]
    assert clip.frames_after == [4, 2, 1, 1]  # frame 0 in full; repeats keep the minimum (+ leftovers)
    per_frame = pruned.prepare(**inputs, temporal=False).videos[0]
    assert per_frame.frames_after == [2, 2, 2, 2] and clip.after == per_frame.after


def test_batch_of_videos_with_different_kept_counts_is_repadded(onevision_bundle):
    inputs = video_batch(onevision_bundle, video_pixels(seed=4, batch=2))
    # Adaptive: the first video keeps everything, the second one token per frame.
    pruned = prune_visual_tokens(onevision_bundle.model, FixedCounts([PER_FRAME] * FRAMES + [1] * FRAMES))
    prepared = pruned.prepare(**inputs)
    assert prepared.video_tokens_after == [17, 5]
    assert prepared.attention_mask.sum(dim=1).tolist() == [inputs["input_ids"].shape[1], inputs["input_ids"].shape[1] - 12]
    assert bool(prepared.attention_mask[:, -1].all())  # left padding
    with torch.no_grad():
        expected = onevision_bundle.model(**{k: v[:1] for k, v in inputs.items()}).logits
        logits = pruned(**inputs).logits
    torch.testing.assert_close(logits[0], expected[0], rtol=1e-5, atol=1e-5)  # the unpruned row is unchanged
    out = pruned.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert out.shape == (2, prepared.input_ids.shape[1] + 2)


def test_image_and_video_in_one_prompt_are_both_pruned(onevision_bundle, make_image, make_selector):
    image = make_image(20, 37, seed=5)
    inputs = video_batch(onevision_bundle, video_pixels(seed=5), images=[image])
    keep_all = prune_visual_tokens(onevision_bundle.model, KeepFirst(), keep=1.0)
    with torch.no_grad():
        torch.testing.assert_close(keep_all(**inputs).logits, onevision_bundle.model(**inputs).logits, rtol=1e-5, atol=1e-5)
    pruned = prune_visual_tokens(onevision_bundle.model, make_selector(), keep=0.25)
    prepared = pruned.prepare(**inputs)
    dropped = sum(prepared.tokens_before) - sum(prepared.tokens_after) + prepared.videos[0].before - prepared.videos[0].after
    assert prepared.tokens_after[0] < prepared.tokens_before[0] and prepared.videos[0].frames_after == [1] * FRAMES
    assert prepared.input_ids.shape[1] == inputs["input_ids"].shape[1] - dropped
    assert set(prepared.mm_encoder_outputs) == {"image", "video"}
    with torch.no_grad():
        assert pruned(**inputs).logits.shape[1] == prepared.input_ids.shape[1]


def test_merging_methods_and_adaptive_thresholds_work_on_frames(onevision_bundle, make_selector):
    inputs = video_batch(onevision_bundle, video_pixels(seed=6))
    merged = prune_visual_tokens(onevision_bundle.model, get_method("pooling"), keep=1).prepare(**inputs)
    assert merged.videos[0].frames_after == [1] * FRAMES
    selector = make_selector()
    pruned = prune_visual_tokens(onevision_bundle.model, selector, threshold=0.0)
    assert pruned.prepare(**inputs).videos[0].frames_after == [PER_FRAME] * FRAMES  # every probability >= 0
    strict = pruned.prepare(**inputs, threshold=1.0, temporal=True).videos[0]
    assert sum(strict.frames_after) == FRAMES  # adaptive keeps >= 1 per frame; temporal spends the same total
    with pytest.raises(ValueError, match="has no threshold"):
        prune_visual_tokens(onevision_bundle.model, KeepFirst(), keep=0.5).prepare(**inputs, threshold=0.3, temporal=True)


def test_clear_errors(onevision_bundle, make_selector):
    inputs = video_batch(onevision_bundle, video_pixels())
    pruned = prune_visual_tokens(onevision_bundle.model, make_selector(), keep=0.5)
    with pytest.raises(ValueError, match="batch, frames"):
        pruned.prepare(**dict(inputs, pixel_values_videos=inputs["pixel_values_videos"][0]))
    short = dict(inputs, input_ids=inputs["input_ids"][:, :10], attention_mask=inputs["attention_mask"][:, :10])
    with pytest.raises(ValueError, match="video 0 needs 17 placeholders"):
        pruned.prepare(**short)
    with pytest.raises(ValueError, match="fusion"):
        prune_video_tokens(onevision_bundle.model, make_selector(), keep=0.5, temporal=True, fusion="max")
    text_only = onevision_bundle.processor.tokenizer(["user : describe a cat"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(pruned(**text_only).logits, onevision_bundle.model(**text_only).logits)


# ------------------------------------------------------------------------------ reading frames
def test_uniform_sampling_and_natural_order(tmp_path, make_image):
    assert uniform_indices(20, 4) == [2, 7, 12, 17] and uniform_indices(3, 8) == [0, 1, 2]
    for i in (10, 2, 1):
        make_image(8, 8, seed=i).save(tmp_path / f"frame_{i}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    assert [p.name for p in frame_files(tmp_path)] == ["frame_1.png", "frame_2.png", "frame_10.png"]
    frames = read_frames(tmp_path, 2)
    assert len(frames) == 2 and frames[0].mode == "RGB"
    assert np.array_equal(np.asarray(frames[1]), np.asarray(make_image(8, 8, seed=10)))  # indices 0 and 2 of 3 files
    with pytest.raises(FileNotFoundError):
        read_frames(tmp_path / "missing.mp4")


def test_video_file_needs_pyav_with_a_clear_message(tmp_path, monkeypatch):
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"\x00")
    monkeypatch.setitem(__import__("sys").modules, "av", None)
    with pytest.raises(ImportError, match=r"pip install av.*folder of frames"):
        read_frames(path, 4)


def write_video(path, frames: int = 12, size: int = 32) -> None:
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = np.full((size, size, 3), 20 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_video_file_is_sampled_uniformly(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, frames=12)
    frames = read_frames(path, 3)  # indices 2, 6, 10 -> grey levels 40, 120, 200
    assert [round(float(np.asarray(f).mean()) / 20) for f in frames] == [2, 6, 10]


# --------------------------------------------------------------------------- processor, chat
@pytest.fixture(scope="module")
def onevision_folder(tmp_path_factory, onevision_bundle):
    folder = tmp_path_factory.mktemp("onevision_video") / "model"
    onevision_bundle.model.save_pretrained(folder)
    onevision_bundle.processor.save_pretrained(folder)
    return folder


def test_processor_without_video_processor_builds_the_same_inputs(onevision_folder, onevision_bundle, make_image):
    processor = load_processor(onevision_folder)
    assert hasattr(processor, "image_processor") and processor.tokenizer.padding_side == "left"
    frames = [make_image(20, 24, seed=i) for i in range(3)]
    prompt = build_video_prompt(processor, "what is in the image ?")
    inputs = video_inputs(processor, frames, prompt)
    assert inputs["pixel_values_videos"].shape == (1, 3, 3, 16, 16)
    assert int((inputs["input_ids"] == onevision_bundle.model.config.video_token_id).sum()) == 3 * PER_FRAME + 1
    base_crop = onevision_bundle.processor.image_processor(images=[frames[1]], return_tensors="pt")["pixel_values"][0, 0]
    torch.testing.assert_close(frames_to_pixels(processor, frames)[1], base_crop)
    with pytest.raises(ValueError, match="video processor"):
        video_inputs(processor, frames, prompt, images=[frames[0]])


@pytest.mark.parametrize("temporal", [False, True])
def test_chat_about_a_folder_of_frames_prints_counts_per_frame(onevision_folder, make_image, tmp_path, capsys, temporal):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(6):
        make_image(20, 24, seed=20 + (0 if temporal and i > 0 else i)).save(frames / f"{i:03d}.png")  # temporal: a still clip
    argv = ["--model", str(onevision_folder), "--selector", "norm", "--video", str(frames), "--frames", "4"]
    argv += ["--prompt", "what is in the image ?", "--keep", "0.5", "--max-new-tokens", "2", "--device", "cpu"]
    assert chat_main([*argv, "--temporal"] if temporal else argv) == 0
    lines = capsys.readouterr().out.splitlines()
    header = [line for line in lines if line.startswith("video ")]
    mode = "temporal" if temporal else "per frame"
    assert header == [f"video (frames, 4 frames, {mode}): 17 -> 9 visual tokens (53% kept)"]
    per_frame = [tuple(map(int, m.groups())) for m in (re.fullmatch(r"  frame (\d): 4 -> (\d) visual tokens \(\d+% kept\)", l) for l in lines) if m]
    assert [f for f, _ in per_frame] == [0, 1, 2, 3]
    assert [kept for _, kept in per_frame] == ([4, 2, 1, 1] if temporal else [2, 2, 2, 2])


def test_chat_about_a_video_file(onevision_folder, tmp_path, capsys):
    path = tmp_path / "clip.mp4"
    write_video(path, frames=10, size=24)
    argv = ["--model", str(onevision_folder), "--selector", "random", "--video", str(path), "--frames", "3"]
    assert chat_main([*argv, "--prompt", "describe it", "--keep", "0.25", "--max-new-tokens", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "video (clip.mp4, 3 frames, per frame): 13 -> 4 visual tokens (31% kept)" in out  # 1 of 4 per frame + newline
    assert out.count("visual tokens") == 4


def test_chat_rejects_bad_video_inputs(onevision_folder, saved_models, tmp_path, make_image, capsys):
    base = ["--selector", "norm", "--prompt", "hi", "--device", "cpu"]
    assert chat_main(["--model", str(onevision_folder), *base]) == 2
    assert "--image or a --video" in capsys.readouterr().err
    assert chat_main(["--model", str(onevision_folder), *base, "--video", str(tmp_path / "none")]) == 2
    assert "--video: not found" in capsys.readouterr().err
    frames = tmp_path / "frames"
    frames.mkdir()
    make_image(16, 16, seed=1).save(frames / "0.png")
    assert chat_main(["--model", str(saved_models["next"]), *base, "--video", str(frames)]) == 2
    assert "takes no video input" in capsys.readouterr().err
