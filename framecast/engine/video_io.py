"""Video output and input: frames are written as they arrive, and never to a half-written file.

- `NAME.mp4`: H.264 (libx264, yuv420p, crf 18) through PyAV, encoded and muxed frame by frame into
  `NAME.partial.mp4`, renamed with `os.replace` to `NAME.mp4` on `close()` (an existing `NAME.mp4`,
  with `overwrite=True`, is replaced only then). The mp4 is fragmented with one fragment per frame
  (`frag_duration=1` µs, `delay_moov+default_base_moof`), the encoder has no lookahead or B-frames
  (`tune=zerolatency`), a keyframe comes at least every second (GOP = round(fps) frames), and every
  packet is flushed to the OS (`flush_packets=1`). Hence the guarantee for a killed writer
  (SIGKILL included): once `write()` has returned with n frames written, `NAME.partial.mp4` decodes
  to at least the first n - 1 of them (a fragment is emitted when the next frame arrives, so only
  the last frame is pending; the moov comes with the first fragment: before it the file is empty).
  A fragment torn by a kill in mid-write is skipped by the readers here.
  Odd sizes are padded to even by repeating the last row / column (yuv420p needs even sizes), so
  an H x W video reads back as (H + H % 2) x (W + W % 2).
- `DIR/` (a path ending in `/` or os.sep, or an existing folder): lossless numbered PNGs `00000.png`,
  ..., each written to a hidden temporary name and renamed, so no half-written PNG ever exists.

With `audio_rate` (models that make sound, docs/avdit.md "Output") every `write` also takes the frames'
audio, one chunk of audio_rate / fps mono samples per frame (a whole number: checked at open):
- mp4: an AAC track (Opus where the PyAV wheel has no AAC encoder), mono, at audio_rate, encoded as
  frames arrive (an AudioFifo cuts the chunks into the encoder's frame size). The encoder puts
  priming samples first (AAC: 1024) and the edit list written with the moov tells players to skip
  them (hence `delay_moov`: the muxer writes the moov with the first fragment, once it has seen
  them). The muxer interleaves the two tracks by time, so the audio encoder's lag (one encoder
  frame and the FIFO) also holds video fragments back: a killed writer leaves a partial that
  decodes to at least the first n - 1 - ceil(2 * frame_size / (audio_rate / fps)) frames.
  Read back (`read_audio`), the track has exactly the samples written, in place.
- PNG folder: `DIR/audio.wav` (16-bit PCM) beside the frames, written as they arrive to a hidden
  `DIR/.audio.wav.tmp` and renamed on `close()` or `abort()` (then holding the written frames' audio).

Refusals happen before anything is written: an existing output (a non-empty folder) unless
`overwrite`, a missing or unwritable parent folder, an unsupported extension, a bad fps or codec.
An earlier run's `NAME.partial.mp4` is replaced without asking (it is a scratch file).
"""
from __future__ import annotations

import math
import numbers
import os
import re
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

EXTENSIONS = (".mp4",)
_FRAME_NAME = re.compile(r"\d{5}\.png")  # the PNG writer's own file names
AUDIO_WAV, _WAV_TMP = "audio.wav", ".audio.wav.tmp"  # a PNG folder's soundtrack, and while it is written
_CRF_CODECS = ("libx264", "libx265")


def to_uint8(video_CFHW: torch.Tensor) -> np.ndarray:
    """[3, F, H, W] in [-1, 1] -> uint8 numpy [F, H, W, 3], exactly as diffusers'
    `VideoProcessor.postprocess_video(output_type="np")` followed by `round(x * 255)`:
    `round(float32(clamp(x * 0.5 + 0.5, 0, 1)) * 255)`, the clamp in the input dtype (as diffusers
    does), round half to even. Inverts `u / 127.5 - 1` exactly for every uint8 u (float32)."""
    if video_CFHW.ndim != 4 or video_CFHW.shape[0] != 3:
        raise ValueError(f"to_uint8 expects [3, F, H, W], got {tuple(video_CFHW.shape)}")
    x = (video_CFHW * 0.5 + 0.5).clamp(0, 1).float()
    return (x * 255).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


def _is_folder_target(path: str) -> bool:
    return path.endswith("/") or path.endswith(os.sep) or os.path.isdir(path)


def _check_parent(parent: Path, shown: str) -> None:
    if not parent.is_dir():
        raise FileNotFoundError(f"output {shown!r}: folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"output {shown!r}: folder {str(parent)!r} is not writable")


def open_video_writer(path, fps: float = 16, overwrite: bool = False, codec: str = "libx264",
                      crf: int | None = None, audio_rate: int | None = None) -> "VideoWriter":
    """A writer for NAME.mp4 (`codec`, `crf`: the encoder and its quality, default 18) or for a PNG
    folder DIR/ (see the module docstring). `audio_rate`: samples per second of a mono soundtrack
    given to every `write` (None: no audio). Use as a context manager, or call close() / abort()."""
    shown = str(path)
    if (isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not math.isfinite(fps)
            or not fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    samples_per_frame = None if audio_rate is None else _samples_per_frame(audio_rate, fps)
    if _is_folder_target(shown):
        folder = Path(shown)
        if folder.exists() and not folder.is_dir():
            raise FileExistsError(f"output folder {shown!r} exists and is not a folder")
        if folder.exists() and any(folder.iterdir()) and not overwrite:
            raise FileExistsError(f"output folder {shown!r} exists and is not empty (use --overwrite)")
        _check_parent(folder.resolve().parent, shown)
        if folder.exists() and not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(f"output folder {shown!r} is not writable")
        return PngWriter(folder, audio_rate, samples_per_frame)
    target = Path(shown)
    if target.suffix.lower() not in EXTENSIONS:
        raise ValueError(f"output {shown!r}: unsupported extension {target.suffix or '(none)'!r}; "
                         f"use .mp4, or a folder path ending in '/' for PNG frames")
    if target.exists() and not overwrite:
        raise FileExistsError(f"output {shown!r} exists (use --overwrite to replace it)")
    _check_parent(target.resolve().parent, shown)
    import av

    try:
        av.Codec(codec, "w")
    except ValueError:
        raise ValueError(f"output {shown!r}: PyAV has no encoder {codec!r}") from None
    if crf is not None and codec not in _CRF_CODECS:
        raise ValueError(f"output {shown!r}: crf applies to {', '.join(_CRF_CODECS)} only, not {codec!r}")
    audio = None if audio_rate is None else Mp4Audio(_audio_codec(shown), audio_rate, samples_per_frame)
    return Mp4Writer(target, fps, codec, crf, audio)


AUDIO_CODECS = ("aac", "libopus")  # the mp4 audio encoder: the first one this PyAV wheel has


def _samples_per_frame(audio_rate, fps) -> int:
    if isinstance(audio_rate, bool) or not isinstance(audio_rate, numbers.Integral) or audio_rate <= 0:
        raise ValueError(f"audio_rate must be a positive whole number of samples per second, got {audio_rate!r}")
    per_frame = Fraction(int(audio_rate)) / Fraction(fps if isinstance(fps, numbers.Rational) else float(fps))
    if per_frame.denominator != 1:
        raise ValueError(f"audio at {audio_rate} Hz needs a whole number of samples per frame; "
                         f"fps={float(fps):g} gives {float(per_frame):.2f}")
    return int(per_frame)


def _audio_codec(shown: str) -> str:
    import av

    for name in AUDIO_CODECS:
        if name in av.codecs_available:
            return name
    raise ValueError(f"output {shown!r}: this PyAV has no audio encoder for mp4 (tried {', '.join(AUDIO_CODECS)})")


class VideoWriter:
    """Shared `write` and context-manager logic: exception -> abort(), else close()."""
    path: Path  # the final output
    partial_path: Path  # where frames go until close() (the folder itself for PNGs)
    frames_written: int = 0
    _done: bool = False

    samples_per_frame: int | None = None  # audio samples each frame carries (None: no audio)

    def write(self, frames: np.ndarray, audio: np.ndarray | None = None) -> None:
        """frames: uint8 [F, H, W, 3] or one frame [H, W, 3]; all frames of a video share H, W.
        audio (writers opened with audio_rate, and only those): the frames' sound, float
        [F, samples_per_frame] or [samples_per_frame] for one frame, in [-1, 1] (clipped)."""
        if self._done:
            raise ValueError(f"writer for {str(self.path)!r} is already closed")
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"write expects uint8 [F, H, W, 3] or [H, W, 3], got {frames.dtype} {frames.shape}")
        chunks = self._audio_chunks(audio, len(frames))
        for frame, chunk in zip(frames, chunks):
            self._write(frame, chunk)
            self.frames_written += 1

    def _audio_chunks(self, audio, n: int) -> list:
        if self.samples_per_frame is None:
            if audio is not None:
                raise ValueError(f"writer for {str(self.path)!r} has no audio track (open it with audio_rate)")
            return [None] * n
        if audio is None:
            raise ValueError(f"writer for {str(self.path)!r} has an audio track: write needs the frames' audio")
        audio = np.asarray(audio)
        want = (n, self.samples_per_frame)
        if audio.ndim == 1 and n == 1:
            audio = audio[None]
        if audio.shape != want or audio.dtype.kind != "f":
            raise ValueError(f"write expects audio float [{n}, {self.samples_per_frame}] for {n} frame(s), "
                             f"got {audio.dtype} {audio.shape}")
        return list(np.clip(audio, -1.0, 1.0).astype(np.float32))

    def _write(self, frame: np.ndarray, audio: np.ndarray | None) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


class Mp4Writer(VideoWriter):
    def __init__(self, path: Path, fps, codec: str, crf, audio: "Mp4Audio | None" = None):
        self.path = path
        self.partial_path = path.with_name(path.stem + ".partial" + path.suffix)
        exact = fps if isinstance(fps, numbers.Rational) else float(fps)  # numpy floats too
        self.rate = Fraction(exact).limit_denominator(1001)  # exact for 24, 30000/1001, 12.5, ...
        self.codec, self.crf = codec, crf
        self.audio = audio
        self.samples_per_frame = None if audio is None else audio.samples_per_frame
        self.container = None
        self.stream = None
        self.size = None  # (H, W) of the first frame
        self.frames_written = 0
        self.opened = False  # NAME.partial.mp4 is this writer's (until then it may be an earlier run's)

    def _open(self, height: int, width: int) -> None:
        import av

        self.size = (height, width)
        self.opened = True
        self.container = av.open(str(self.partial_path), "w", format="mp4", options={
            # a fragment per frame (cut when a track's next packet comes 1 us or more later; the
            # frag_every_frame flag instead misdates a track's fragments once two tracks interleave),
            # behind a moov written with the first fragment (delay_moov: by then the muxer knows the
            # audio encoder's priming and writes the edit list that skips it): every finished
            # fragment plays
            "movflags": "delay_moov+default_base_moof", "frag_duration": "1",
            "flush_packets": "1"})  # hand each packet to the OS at once (else 32 KB sit in AVIO)
        self.stream = self.container.add_stream(self.codec, rate=self.rate)
        self.stream.width, self.stream.height = width + width % 2, height + height % 2
        self.stream.pix_fmt = "yuv420p"
        opts = {"g": str(max(1, round(self.rate)))}  # a keyframe (a seek point) at least every second
        if self.codec == "libx264":
            opts["tune"] = "zerolatency"  # no lookahead / B-frames: a packet out per frame in
        if self.codec in _CRF_CODECS:
            opts["crf"] = str(18 if self.crf is None else self.crf)
        self.stream.options = opts
        if self.audio is not None:
            self.audio.open(self.container)

    def _write(self, frame: np.ndarray, audio: np.ndarray | None) -> None:
        import av

        h, w = frame.shape[:2]
        if self.container is None:
            self._open(h, w)
        elif (h, w) != self.size:
            raise ValueError(f"frame size {h}x{w} differs from the video's {self.size[0]}x{self.size[1]}")
        if h % 2 or w % 2:  # yuv420p needs even sizes: repeat the last row / column
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts, vf.time_base = self.frames_written, 1 / self.rate
        for packet in self.stream.encode(vf):
            self.container.mux(packet)
        if audio is not None:
            self.audio.write(self.container, audio)

    def _finish(self) -> None:
        if self.container is not None:
            container, self.container = self.container, None
            try:
                if self.audio is not None:
                    self.audio.flush(container)
                for packet in self.stream.encode(None):
                    container.mux(packet)
            finally:
                container.close()

    def close(self) -> Path:
        """Finalise and rename NAME.partial.mp4 to NAME.mp4; returns NAME.mp4."""
        if self._done:
            return self.path
        if self.frames_written == 0:
            self.abort()
            raise ValueError(f"no frames were written to {str(self.path)!r}")
        self._finish()
        os.replace(self.partial_path, self.path)
        self._done = True
        return self.path

    def abort(self) -> None:
        """Finalise what was written, left playable as NAME.partial.mp4 (not renamed); nothing is
        left if no frame was written (an earlier run's NAME.partial.mp4 that this writer never
        opened stays as it was)."""
        if self._done:
            return
        self._done = True
        try:
            self._finish()
        finally:
            if self.frames_written == 0 and self.opened and self.partial_path.exists():
                self.partial_path.unlink()


class Mp4Audio:
    """The mp4's audio track: mono float chunks in, encoder-sized frames out, muxed as they come."""

    def __init__(self, codec: str, rate: int, samples_per_frame: int):
        self.codec, self.rate, self.samples_per_frame = codec, int(rate), samples_per_frame
        self.stream = self.resampler = self.fifo = None
        self.encoded = 0  # samples handed to the encoder

    def open(self, container) -> None:
        import av

        self.stream = container.add_stream(self.codec, rate=self.rate)
        self.stream.layout = "mono"
        self.stream.codec_context.open()  # its frame size is known once open
        # to the encoder's sample format (AAC: planar float, Opus: int16); the rate stays
        self.resampler = av.AudioResampler(format=self.stream.format, layout="mono", rate=self.rate)
        self.fifo = av.AudioFifo()

    def write(self, container, chunk: np.ndarray) -> None:
        import av

        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk)[None], format="fltp", layout="mono")
        frame.sample_rate = self.rate
        for part in self.resampler.resample(frame):
            part.pts = None  # the FIFO counts samples; pts are set on the way out
            self.fifo.write(part)
        size = self.stream.codec_context.frame_size or self.fifo.samples
        while self.fifo.samples >= size > 0:
            self._encode(container, self.fifo.read(size))

    def flush(self, container) -> None:
        for part in self.resampler.resample(None):
            part.pts = None
            self.fifo.write(part)
        if self.fifo.samples:  # a short last frame (both encoders take one)
            self._encode(container, self.fifo.read())
        self._encode(container, None)

    def _encode(self, container, frame) -> None:
        if frame is not None:
            frame.pts, frame.time_base = self.encoded, Fraction(1, self.rate)
            self.encoded += frame.samples
        for packet in self.stream.encode(frame):
            container.mux(packet)


class PngWriter(VideoWriter):
    def __init__(self, folder: Path, audio_rate: int | None = None, samples_per_frame: int | None = None):
        self.path = self.partial_path = folder
        self.frames_written = 0
        self.audio_rate, self.samples_per_frame = audio_rate, samples_per_frame
        self.wav = None  # the open `.audio.wav.tmp` (wave.Wave_write)

    def _write(self, frame: np.ndarray, audio: np.ndarray | None) -> None:
        import imageio.v3 as iio

        self.path.mkdir(exist_ok=True)
        final = self.path / f"{self.frames_written:05d}.png"
        tmp = self.path / f".{self.frames_written:05d}.png.tmp"  # hidden: readers skip it
        iio.imwrite(tmp, frame, extension=".png")
        os.replace(tmp, final)
        if audio is not None:
            if self.wav is None:
                import wave

                self.wav = wave.open(str(self.path / _WAV_TMP), "wb")
                self.wav.setnchannels(1)
                self.wav.setsampwidth(2)
                self.wav.setframerate(self.audio_rate)
            self.wav.writeframes((np.round(audio * 32767)).astype("<i2").tobytes())

    def _finish_audio(self) -> None:
        """audio.wav holds the written frames' sound; a writer without audio drops an older one."""
        if self.wav is not None:
            self.wav.close()
            os.replace(self.path / _WAV_TMP, self.path / AUDIO_WAV)
        elif self.samples_per_frame is None and (self.path / AUDIO_WAV).is_file():
            (self.path / AUDIO_WAV).unlink()

    def _drop_stale(self) -> None:
        """With overwrite, an older, longer video's frames past ours must not stay behind."""
        if self.path.is_dir():
            for p in self.path.iterdir():
                if _FRAME_NAME.fullmatch(p.name) and int(p.name[:5]) >= self.frames_written:
                    p.unlink()

    def close(self) -> Path:
        if self._done:
            return self.path
        if self.frames_written == 0:
            raise ValueError(f"no frames were written to {str(self.path)!r}")
        self._drop_stale()
        self._finish_audio()
        self._done = True
        return self.path

    def abort(self) -> None:
        """Every PNG on disk is complete; keep the ones written (and their audio), drop an older
        video's others."""
        if not self._done:
            self._done = True
            if self.frames_written:
                self._drop_stale()
                self._finish_audio()


def _png_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"no PNG frames in {str(folder)!r}")
    return files


def _mp4_packets(container, stream) -> Iterator:
    """The stream's packets up to a torn one: a killed writer's last fragment may be cut short
    (the demuxer flags it corrupt); everything before it is complete."""
    for packet in container.demux(stream):
        if packet.is_corrupt:
            return
        if packet.size:
            yield packet


def iter_video(path) -> Iterator[np.ndarray]:
    """Frames of an mp4 or a PNG folder (sorted by name), one uint8 [H, W, 3] at a time."""
    path = Path(path)
    if path.is_dir():
        import imageio.v3 as iio

        for f in _png_files(path):
            img = np.asarray(iio.imread(f))
            yield np.repeat(img[..., None], 3, -1) if img.ndim == 2 else img[..., :3]
        return
    if not path.is_file():
        raise FileNotFoundError(f"video {str(path)!r} does not exist")
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for packet in _mp4_packets(container, stream):
            for frame in stream.decode(packet):
                yield frame.to_ndarray(format="rgb24")
        for frame in stream.decode(None):  # drain the decoder
            yield frame.to_ndarray(format="rgb24")


def read_video(path) -> np.ndarray:
    """All frames as uint8 [F, H, W, 3]."""
    frames = list(iter_video(path))
    if not frames:
        raise ValueError(f"video {str(path)!r} has no decodable frames")
    return np.stack(frames)


def video_info(path) -> dict:
    """{"frames": F, "fps": float (None for PNG folders), "height": H, "width": W}; for mp4 the
    frames are counted from packets (no decoding), the same ones `iter_video` decodes."""
    path = Path(path)
    if path.is_dir():
        files = _png_files(path)
        h, w = next(iter_video(path)).shape[:2]
        return {"frames": len(files), "fps": None, "height": h, "width": w}
    if not path.is_file():
        raise FileNotFoundError(f"video {str(path)!r} does not exist")
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in _mp4_packets(container, stream))
        fps = stream.average_rate or stream.guessed_rate
        return {"frames": frames, "fps": float(fps) if fps else None,
                "height": stream.height, "width": stream.width}


def read_audio(path) -> tuple[np.ndarray, int]:
    """(float32 mono samples [N], sample rate) of an mp4's audio track (the encoder's priming
    skipped, as the edit list says) or of a PNG folder's audio.wav."""
    path = Path(path)
    if path.is_dir():
        import wave

        if not (path / AUDIO_WAV).is_file():
            raise FileNotFoundError(f"video folder {str(path)!r} has no {AUDIO_WAV}")
        with wave.open(str(path / AUDIO_WAV), "rb") as f:
            pcm = np.frombuffer(f.readframes(f.getnframes()), "<i2")
            return (pcm.astype(np.float32) / 32767).reshape(-1, f.getnchannels())[:, 0], f.getframerate()
    if not path.is_file():
        raise FileNotFoundError(f"video {str(path)!r} does not exist")
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"video {str(path)!r} has no audio track")
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate  # the decoder's (Opus decodes at 48 kHz)
        packets = list(_mp4_packets(container, stream))
        frames = [f for p in packets for f in stream.decode(p)] + stream.decode(None)
        parts = [f.to_ndarray().reshape(-1, f.samples)[0] for f in frames]  # mono: planar or packed alike
        # the short last frame decodes to a whole one: keep up to the end of the last packet
        kept = max((p.pts + p.duration for p in packets), default=0) * stream.time_base * rate
    samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    if samples.dtype.kind == "i":
        samples = samples / float(np.iinfo(samples.dtype).max)
    return samples[:round(kept)].astype(np.float32), rate
