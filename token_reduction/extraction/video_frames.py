"""Read a short video as a list of frames: a folder of images always works, a file needs PyAV.

* **Folder:** every image file in it (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.webp``, ``.tif``,
  ``.tiff``, ``.gif``), in *natural* name order (``frame_2`` before ``frame_10``).
* **Video file:** decoded with PyAV (``pip install av``, or ``pip install token_reduction[video]``),
  imported only when a file is read, with an error naming both ways out when it is missing.

Both sample ``num_frames`` frames uniformly: frame ``i`` of ``n`` is the middle of the ``i``-th
of ``n`` equal segments, ``floor((i + 0.5) * total / n)``. A source with fewer frames than asked
gives all of them. Frames come back as RGB ``PIL.Image`` objects.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
DEFAULT_FRAMES = 8


def uniform_indices(total: int, num_frames: int) -> list[int]:
    """``num_frames`` indices spread uniformly over ``range(total)`` (all of them when fewer)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if total <= num_frames:
        return list(range(total))
    return [int((i + 0.5) * total / num_frames) for i in range(num_frames)]


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def frame_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files of ``folder`` in natural name order."""
    files = [p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=_natural_key)


def import_av() -> Any:
    """PyAV, or an ``ImportError`` that says how to get it or avoid it."""
    try:
        import av
    except ImportError:
        raise ImportError(
            "reading video files needs PyAV: `pip install av` (or `pip install token_reduction[video]`), "
            "or pass a folder of frames (sorted image files) instead"
        ) from None
    return av


def count_video_frames(path: str | os.PathLike[str]) -> int:
    """Frames in the first video stream: the container's count, else the packets demuxed."""
    av = import_av()
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        return sum(1 for packet in container.demux(stream) if packet.size)


def read_video_file(path: str | os.PathLike[str], num_frames: int = DEFAULT_FRAMES) -> list[Image.Image]:
    """``num_frames`` uniformly sampled RGB frames of a video file (PyAV)."""
    av = import_av()
    wanted = uniform_indices(count_video_frames(path), num_frames)
    targets = set(wanted)
    frames: dict[int, Image.Image] = {}
    last: Any = None
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(container.streams.video[0])):
            last = frame
            if index in targets:
                frames[index] = frame.to_image().convert("RGB")
                if len(frames) == len(targets):
                    break
    if last is None:
        raise ValueError(f"no frame could be decoded from {path}")
    # A container that over-reports its length: indices past the end repeat the last decoded frame.
    fill = last.to_image().convert("RGB") if len(frames) < len(targets) else None
    return [frames.get(i, fill) for i in wanted]


def read_frames(source: str | os.PathLike[str], num_frames: int = DEFAULT_FRAMES) -> list[Image.Image]:
    """``num_frames`` uniformly sampled RGB frames of a folder of images or a video file."""
    path = Path(source)
    if path.is_dir():
        files = frame_files(path)
        if not files:
            raise ValueError(f"folder {path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        return [Image.open(files[i]).convert("RGB") for i in uniform_indices(len(files), num_frames)]
    if not path.is_file():
        raise FileNotFoundError(f"video {path} does not exist (pass a video file or a folder of frames)")
    if path.suffix.lower() in IMAGE_SUFFIXES and path.suffix.lower() != ".gif":
        raise ValueError(f"{path} is a single image; pass it with --image, or a folder of frames as the video")
    return read_video_file(path, num_frames)


__all__ = ["DEFAULT_FRAMES", "IMAGE_SUFFIXES", "count_video_frames", "frame_files", "import_av", "read_frames", "read_video_file", "uniform_indices"]
