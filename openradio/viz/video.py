"""PCA feature videos: decode with PyAV, colour every frame with one PCA, encode H.264.

Colours must not flicker from frame to frame, so the PCA is fitted **once**, on evenly spaced
key frames (~30), and those statistics colour every frame (the official
``visualize_video_features.py`` does the same, spec/inference.md §8). Frames are streamed in
batches: the video is decoded twice (key frames, then everything) instead of being held in
memory, so long videos work.

Frame arrays are ``(T, H, W, 3)`` uint8 RGB (torchvision's ``read_video``/``write_video``
convention).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from openradio.atomicio import partial_name
from openradio.extras import require
from openradio.inputs.imageio import tensor_to_uint8
from openradio.model.video import check_clip_frames, pad_to_clips
from openradio.runtime import model_resolution
from openradio.viz.features import model_features, prepare_input
from openradio.viz.pca import PCAStats, apply_pca, get_robust_pca, upsample_rgb

__all__ = [
    "Video",
    "VideoInfo",
    "VideoWriter",
    "VideoSummary",
    "probe_video",
    "read_video_frames",
    "iter_video_batches",
    "write_video",
    "key_frame_indices",
    "visualize_video",
]

DEFAULT_FPS = Fraction(30)


class Video(NamedTuple):
    frames: Tensor  # (T, H, W, 3) uint8 RGB
    fps: Fraction


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: Fraction
    num_frames: int  # from the container, or counted from packets when it does not say


@dataclass(frozen=True)
class VideoSummary:
    path: Path
    num_frames: int
    height: int
    width: int
    fps: Fraction


def _open_input(path: str | Path):
    av = require("av", "reading video")

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"video file not found: {path}")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as e:
        raise ValueError(f"cannot read video {path}: {e} (is it a complete video file?)") from e
    if not container.streams.video:
        container.close()
        raise ValueError(f"{path} has no video stream")
    return container


def _stream_fps(stream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
        return DEFAULT_FPS
    # Encoders reject huge denominators; NTSC rates like 30000/1001 survive this.
    return Fraction(rate).limit_denominator(1001)


def probe_video(path: str | Path) -> VideoInfo:
    """Size, frame rate and frame count of a video's first video stream (no full decode)."""
    container = _open_input(path)
    try:
        stream = container.streams.video[0]
        n = int(stream.frames or 0)
        if n <= 0:  # some containers (e.g. raw streams, some webm) do not record it: count packets
            n = sum(1 for pkt in container.demux(stream) if pkt.size)
        return VideoInfo(int(stream.codec_context.width), int(stream.codec_context.height), _stream_fps(stream), n)
    finally:
        container.close()


def _decode(path: str | Path, max_frames: int | None = None) -> Iterator[np.ndarray]:
    av = require("av", "reading video")

    container = _open_input(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        count = 0
        try:
            for frame in container.decode(stream):
                if max_frames is not None and count >= max_frames:
                    break
                yield frame.to_ndarray(format="rgb24")
                count += 1
        except av.error.FFmpegError as e:
            raise ValueError(f"cannot decode video {path} after {count} frames: {e}") from e
    finally:
        container.close()


def iter_video_batches(
    path: str | Path, batch_size: int = 16, max_frames: int | None = None, indices: Sequence[int] | None = None
) -> Iterator[Tensor]:
    """Yield ``(B, H, W, 3)`` uint8 batches of decoded frames (only frames in ``indices`` if given)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    wanted = sorted(set(int(i) for i in indices)) if indices is not None else None
    last = wanted[-1] if wanted else None
    wanted_set = set(wanted) if wanted is not None else None
    buf: list[np.ndarray] = []
    for i, frame in enumerate(_decode(path, max_frames)):
        if wanted_set is not None:
            if i > last:
                break  # nothing more is needed: stop decoding
            if i not in wanted_set:
                continue
        buf.append(frame)
        if len(buf) == batch_size:
            yield torch.from_numpy(np.stack(buf))
            buf = []
    if buf:
        yield torch.from_numpy(np.stack(buf))


def read_video_frames(path: str | Path, max_frames: int | None = None) -> Video:
    """Decode a whole video into memory: ``Video(frames (T, H, W, 3) uint8, fps)``."""
    fps = probe_video(path).fps
    batches = list(iter_video_batches(path, batch_size=64, max_frames=max_frames))
    if not batches:
        raise ValueError(f"{path} contains no decodable video frames")
    return Video(torch.cat(batches), fps)


def _as_uint8_frames(frames) -> np.ndarray:
    arr = frames.detach().cpu().numpy() if isinstance(frames, Tensor) else np.asarray(frames)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (T, H, W, 3), got {tuple(arr.shape)}")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"frames must be uint8 or float in [0, 1], got dtype {arr.dtype}")
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return arr


class VideoWriter:
    """Stream ``(B, H, W, 3)`` uint8 RGB frames into an H.264 (libx264, yuv420p) file.

    yuv420p subsamples chroma 2x2, so odd frame sides are padded by repeating the last
    row/column (players would otherwise refuse or crop the file). Use as a context manager.
    """

    def __init__(
        self,
        path: str | Path,
        fps: float | Fraction = DEFAULT_FPS,
        crf: int = 23,
        codec: str = "libx264",
        pix_fmt: str = "yuv420p",
    ):
        av = require("av", "writing video")

        if not 0 <= crf <= 51:
            raise ValueError(f"crf must be in 0..51 (lower = better quality), got {crf}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = Fraction(fps).limit_denominator(1001) if fps else DEFAULT_FPS
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.crf, self.codec, self.pix_fmt = crf, codec, pix_fmt
        # written under a temporary name, renamed by close(): a killed run leaves no truncated video
        self._tmp = partial_name(self.path)
        self._container = av.open(str(self._tmp), mode="w")  # the temporary name keeps the extension
        self._stream = None
        self.num_frames = 0
        self.size: tuple[int, int] | None = None  # (height, width) as written

    def _open_stream(self, height: int, width: int) -> None:
        self._stream = self._container.add_stream(self.codec, rate=self.fps)
        self._stream.height, self._stream.width = height + height % 2, width + width % 2
        self._stream.pix_fmt = self.pix_fmt
        self._stream.options = {"crf": str(self.crf)}
        self.size = (self._stream.height, self._stream.width)

    def write(self, frames) -> None:
        av = require("av", "writing video")

        arr = _as_uint8_frames(frames)
        if self._stream is None:
            self._open_stream(arr.shape[1], arr.shape[2])
        h, w = self.size
        if arr.shape[1] + arr.shape[1] % 2 != h or arr.shape[2] + arr.shape[2] % 2 != w:
            raise ValueError(f"frame size {arr.shape[1:3]} differs from the video's {self.size}")
        if arr.shape[1] != h or arr.shape[2] != w:
            arr = np.pad(arr, ((0, 0), (0, h - arr.shape[1]), (0, w - arr.shape[2]), (0, 0)), mode="edge")
        for img in arr:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            self.num_frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        ok = False
        try:
            if self._stream is not None:
                for packet in self._stream.encode(None):  # flush delayed (B-)frames
                    self._container.mux(packet)
            ok = True
        finally:
            self._container.close()
            self._container = None
            if ok:
                os.replace(self._tmp, self.path)
            else:
                self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None and self._container is not None:  # failed mid-way: no file at all
            self._container.close()
            self._container = None
            self._tmp.unlink(missing_ok=True)
            return
        self.close()


def write_video(path: str | Path, frames, fps: float | Fraction = DEFAULT_FPS, crf: int = 23) -> Path:
    """Write ``(T, H, W, 3)`` uint8 (or float [0, 1]) RGB frames as an H.264 mp4."""
    arr = _as_uint8_frames(frames)
    if len(arr) == 0:
        raise ValueError("no frames to write")
    with VideoWriter(path, fps=fps, crf=crf) as w:
        w.write(arr)
    return Path(path)


def key_frame_indices(num_frames: int, num_key_frames: int = 30) -> list[int]:
    """``num_key_frames`` evenly spaced frame indices covering the first and last frame."""
    if num_frames < 1:
        raise ValueError("the video has no frames")
    k = max(1, min(num_key_frames, num_frames))
    return sorted({int(round(i)) for i in np.linspace(0, num_frames - 1, k)})


def _to_model_batch(frames: Tensor) -> Tensor:
    return frames.permute(0, 3, 1, 2).float().div_(255.0)


def visualize_video(
    model: nn.Module,
    in_path: str | Path,
    out_path: str | Path,
    resolution: int | None = None,
    adaptor: str | None = None,
    *,
    side_by_side: bool = False,
    batch_size: int = 16,
    num_key_frames: int = 30,
    interpolation: str = "nearest",
    crf: int = 23,
    amp: bool = False,
    max_frames: int | None = None,
    progress: bool = True,
    m: float = 2.0,
    skip: int = 0,
    seed: int = 42,
    stats: PCAStats | None = None,
    clip_frames: int = 1,
) -> VideoSummary:
    """Colour a video's spatial features by robust PCA and write them as an H.264 mp4.

    Frames are resized like images (shorter side ``resolution``, sides rounded to the model's
    step; default the model's preferred resolution), run in batches of ``batch_size``, coloured
    with one PCA fitted on ``num_key_frames`` evenly spaced frames (or ``stats``), upsampled with
    ``interpolation`` (``'nearest'`` shows the token grid, as the official script does) and
    written at the input's frame rate; ``side_by_side`` puts the resized input on the left.

    ``clip_frames`` T > 1: consecutive clips of T frames share one CPE viewport, or on a model
    whose temporal patch size is T each clip runs temporally packed and its features colour all of
    its frames (:func:`openradio.model.video.forward_frames`). Batches then hold whole clips
    (``batch_size`` rounded up to a multiple of T); the last clip is padded with its last frame.
    """
    t = check_clip_frames(clip_frames)
    batch_size = -(-batch_size // t) * t
    info = probe_video(in_path)
    total = info.num_frames if max_frames is None else min(info.num_frames, max_frames)
    res = model_resolution(model, resolution)

    def features_of(frames: Tensor) -> tuple[Tensor, Tensor]:
        x = prepare_input(_to_model_batch(frames), model, res)
        xp, n = pad_to_clips(x, t)
        return x, model_features(model, xp, adaptor=adaptor, amp=amp, clip_frames=t)[:n]

    if stats is None:
        keys = key_frame_indices(max(total, 1), num_key_frames)
        if t > 1:  # the whole clip of each key frame, so clips stay clips
            keys = sorted({k // t * t + j for k in keys for j in range(t) if k // t * t + j < max(total, 1)})
        key_feats = [features_of(b)[1].cpu() for b in iter_video_batches(in_path, batch_size, max_frames, keys)]
        if not key_feats:
            raise ValueError(f"{in_path} contains no decodable video frames")
        stats = get_robust_pca(torch.cat(key_feats), m=m, skip=skip, seed=seed)

    written = 0
    with (
        VideoWriter(out_path, fps=info.fps, crf=crf) as writer,
        tqdm(total=total or None, unit="frame", desc="viz-video", disable=not progress) as bar,
    ):
        for frames in iter_video_batches(in_path, batch_size, max_frames):
            x, feats = features_of(frames)
            rgb = upsample_rgb(apply_pca(feats, stats), x.shape[-2:], interpolation)  # (B, H, W, 3)
            out = (rgb.cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
            if side_by_side:
                inp = np.stack([tensor_to_uint8(xi) for xi in x.cpu()])
                out = np.concatenate([inp, out], axis=2)
            writer.write(out)
            written += len(out)
            bar.update(len(out))
        if written == 0:
            raise ValueError(f"{in_path} contains no decodable video frames")
        h, w = writer.size
    return VideoSummary(Path(out_path), written, h, w, writer.fps)
