"""``token-reduction chat`` on a tiny saved LLaVA-NeXT."""

from __future__ import annotations

import re

from token_reduction.cli.chat import chat_main


def test_chat_prints_answer_and_token_counts(saved_models, images, tmp_path, capsys):
    image = tmp_path / "wide.png"
    images[0].save(image)
    argv = ["--model", str(saved_models["next"]), "--selector", str(saved_models["selector"]), "--image", str(image)]
    code = chat_main([*argv, "--prompt", "what is in the image ?", "--keep", "0.25", "--max-new-tokens", "3", "--device", "cpu"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    counts = re.fullmatch(r"image 0 \(wide\.png\): (\d+) -> (\d+) visual tokens \(\d+% kept\)", lines[-1])
    assert counts is not None and int(counts[2]) < int(counts[1])


def test_chat_with_a_baseline_name_and_two_images(saved_models, images, tmp_path, capsys):
    paths = []
    for i, picture in enumerate(images):
        paths += ["--image", str(tmp_path / f"{i}.png")]
        picture.save(tmp_path / f"{i}.png")
    argv = ["--model", str(saved_models["next"]), "--selector", "random", *paths, "--prompt", "describe it", "--keep", "4"]
    assert chat_main([*argv, "--max-new-tokens", "2", "--device", "cpu"]) == 0
    assert len([line for line in capsys.readouterr().out.splitlines() if line.startswith("image ")]) == 2


def test_chat_reports_bad_inputs(saved_models, tmp_path, capsys):
    argv = ["--model", str(saved_models["next"]), "--prompt", "hi", "--device", "cpu"]
    assert chat_main([*argv, "--selector", "random", "--image", str(tmp_path / "missing.png")]) == 2
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    assert chat_main([*argv, "--selector", "no_such_method", "--image", str(image)]) == 2
    assert "unknown selection method" in capsys.readouterr().err
