"""Video sources: files, RTSP and HTTP, each decoded by PyAV on its own thread.

``parse_source`` turns a command-line SOURCE into a ``SourceSpec``; ``VideoSource`` decodes
it into ``Frame`` objects on one thread and hands them over through a bounded queue.
Files never drop frames (the decoder waits for the consumer); live sources apply the
configured ``DropPolicy`` and reconnect with capped exponential backoff when they drop.
Every error is a one-line ``SourceError`` naming the input (credentials redacted) and
the fix; it is stored on ``VideoSource.error`` rather than raised, so one bad stream
never stops the others.

At every connect and reconnect a source checks its host against the spec's ``HostPolicy``
(control-topic streams; ``pipeline.core.hosts``), adds the ``source.credentials`` entry of its
own host (``pipeline.core.credentials``), and opens with FFmpeg's ``protocol_whitelist`` of
its kind; a denied host and a frame over ``source.max_pixels`` fail the stream for good.
"""

from __future__ import annotations

import enum
import itertools
import logging
import os
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from pipeline.core.config import DropPolicy, SourceSettings
from pipeline.core.credentials import with_credentials
from pipeline.core.errors import ConfigError, SourceError
from pipeline.core.hosts import HostPolicy
from pipeline.core.ids import ID_RE, id_problem
from pipeline.core.redact import redact_text, redact_url
from pipeline.core.types import Frame
from pipeline.media.hwaccel import decode_options
from pipeline.media.pictures import pixels_of

if TYPE_CHECKING:
    import av.container
    import av.video.stream

logger = logging.getLogger(__name__)

STREAM_ID_PATTERN = ID_RE  # the one id rule of pipeline.core.ids (no ":" or "@")
#: Environment variables holding RTSP credentials, read when a source is parsed; they apply
#: only to ``run``'s own command-line sources, never to streams from the control topic (those
#: get the ``source.credentials`` entry of their host: ``pipeline.core.credentials``).
ENV_RTSP_USERNAME = "ES_RTSP_USERNAME"
ENV_RTSP_PASSWORD = "ES_RTSP_PASSWORD"
ENV_RTSP_PASSWORD_FILE = "ES_RTSP_PASSWORD_FILE"
_MEDIA_SUFFIXES = frozenset(
    {".mp4", ".mkv", ".mov", ".avi", ".webm", ".ts", ".flv", ".m4v", ".mpg", ".mpeg"}
)
_JOIN_TIMEOUT_S = 3.0


class SourceKind(enum.StrEnum):
    """Where a source's bytes come from."""

    FILE = "file"
    RTSP = "rtsp"
    HTTP = "http"
    RTMP = "rtmp"


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """What to open. ``url`` may carry credentials and is never logged: use ``display``.
    ``hosts``: the allow/deny policy checked at every connect (control-topic streams);
    None for the operator's own sources."""

    url: str = field(repr=False)
    kind: SourceKind
    stream_id: str
    is_live: bool
    display: str
    hosts: HostPolicy | None = field(default=None, repr=False, compare=False)


#: FFmpeg protocols each kind of source may use (``protocol_whitelist``): nested opens (HLS
#: segments and keys, redirects) are held to the same list, so that an HLS playlist cannot
#: make the worker read ``file:`` or any other protocol.
PROTOCOL_WHITELIST: dict[str, str] = {
    "file": "file",
    "rtsp": "rtsp,rtsps,rtp,srtp,udp,tcp,tls",
    "http": "http,https,tcp,tls,crypto",
    "rtmp": "rtmp,rtmps,tcp,tls",
}


class SourceState(enum.StrEnum):
    """Where a source stands: ``failed`` and ``ended`` are final."""

    CONNECTING = "connecting"
    RUNNING = "running"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class SourceStats:
    """Counters of one source. ``fps`` is decoded frames per second since the first frame.

    ``decode_errors`` counts packets the decoder refused and frames it flagged corrupt (each
    skipped); ``epoch`` is the current capture's epoch (0 for files); ``reason`` says why the
    source is reconnecting or failed."""

    decoded: int
    queued: int
    dropped: int
    reconnects: int
    fps: float
    decode_errors: int = 0
    state: SourceState = SourceState.CONNECTING
    reason: str | None = None
    epoch: int = 0


# ---------------------------------------------------------------------------- parsing


def _sanitise(text: str) -> str:
    out = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    return out[:128] or "stream"


def default_stream_id(kind: SourceKind, url: str) -> str:
    """A stable stream id: a file's sanitised stem, a URL's sanitised host and path."""
    if kind is SourceKind.FILE:
        return _sanitise(Path(url).stem)
    parts = urlsplit(url)
    host = parts.hostname or "stream"
    port = f"-{parts.port}" if parts.port else ""
    return _sanitise(f"{host}{port}{parts.path}")


def _rtsp_credentials() -> tuple[str, str] | None:
    """(user, password) from ES_RTSP_USERNAME and ES_RTSP_PASSWORD(_FILE), or None if unset."""
    user = os.environ.get(ENV_RTSP_USERNAME)
    if not user:
        return None
    password = os.environ.get(ENV_RTSP_PASSWORD)
    pw_file = os.environ.get(ENV_RTSP_PASSWORD_FILE)
    if password is None and pw_file:
        try:
            password = Path(pw_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"{ENV_RTSP_PASSWORD_FILE}={pw_file}: cannot read the password file ({exc.strerror}): fix the path"
            ) from None
    return user, password or ""


def _with_credentials(url: str) -> str:
    parts = urlsplit(url)
    creds = _rtsp_credentials()
    if creds is None or "@" in parts.netloc:
        return url
    user, password = (quote(c, safe="") for c in creds)
    userinfo = f"{user}:{password}" if password else user
    return urlunsplit(
        (parts.scheme, f"{userinfo}@{parts.netloc}", parts.path, parts.query, parts.fragment)
    )


def _kind_of(src: str) -> tuple[SourceKind, str]:
    scheme = urlsplit(src).scheme.lower() if "://" in src else ""
    if scheme in ("rtsp", "rtsps"):
        return SourceKind.RTSP, src
    if scheme in ("http", "https"):
        return SourceKind.HTTP, src
    if scheme in ("rtmp", "rtmps"):
        return SourceKind.RTMP, src
    if scheme == "file":
        return SourceKind.FILE, unquote(urlsplit(src).path)
    if scheme:
        raise ConfigError(
            f"source {redact_url(src)}: unsupported scheme {scheme!r}: use a file path, file://, rtsp:// or http(s)://"
        )
    return SourceKind.FILE, src


def parse_source(
    src: str,
    stream_id: str | None = None,
    *,
    hosts: HostPolicy | None = None,
    env_credentials: bool = True,
) -> SourceSpec:
    """A ``SourceSpec`` for a file path, ``file://``, ``rtsp(s)://``, ``http(s)://`` or ``rtmp://`` URL.

    With ``env_credentials`` (``run``'s own command-line sources), RTSP URLs without userinfo
    get ``ES_RTSP_USERNAME`` / ``ES_RTSP_PASSWORD`` (or the file named by
    ``ES_RTSP_PASSWORD_FILE``) when set; they are read here, on each call. Streams from the
    control topic pass ``env_credentials=False`` and ``hosts``: they get only the
    ``source.credentials`` entry of their own host, at connect time, and only allowed hosts.
    """
    src = src.strip()
    if not src:
        raise ConfigError("empty source: give a file path or an rtsp:// / http(s):// URL")
    kind, url = _kind_of(src)
    if kind is SourceKind.RTSP and env_credentials:
        url = _with_credentials(url)
    if kind is not SourceKind.FILE and not urlsplit(url).hostname:
        raise ConfigError(
            f"source {redact_url(src)}: the URL has no host: use scheme://host[:port]/path"
        )
    sid = stream_id if stream_id is not None else default_stream_id(kind, url)
    if (problem := id_problem("stream id", sid)) is not None:
        raise ConfigError(f"{problem} (source {redact_url(src)})")
    is_live = kind is not SourceKind.FILE
    if kind is SourceKind.HTTP and Path(urlsplit(url).path).suffix.lower() in _MEDIA_SUFFIXES:
        is_live = False  # a video file served over HTTP
    return SourceSpec(
        url=url,
        kind=kind,
        stream_id=sid,
        is_live=is_live,
        display=redact_url(url),
        hosts=hosts if kind is not SourceKind.FILE else None,
    )


# ---------------------------------------------------------------------------- decoding


class _StoppedError(Exception):
    """The source was stopped while the decode thread waited."""


class _DroppedError(Exception):
    """A live source's connection ended or failed after it had opened."""


class _DoneError(Exception):
    """max_frames reached."""


class FatalSourceError(SourceError):
    """A source that must not be retried: its host is denied, its frames are too large."""


def _capture_epoch() -> int:
    """A new live capture's epoch: its start time in ms (never 0, which marks files)."""
    return max(1, int(time.time() * 1000))


class VideoSource:
    """Decodes one ``SourceSpec`` on its own thread into a bounded queue of ``Frame``."""

    def __init__(self, spec: SourceSpec, settings: SourceSettings) -> None:
        self.spec = spec
        self.settings = settings
        self._queue: queue.Queue[Frame] = queue.Queue(maxsize=settings.queue_size)
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"source-{spec.stream_id}", daemon=True
        )
        self._lock = threading.Lock()
        self.error: SourceError | None = None
        self._decoded = 0
        self._queued = 0
        self._dropped = 0
        self._reconnects = 0
        self._first_decode: float | None = None
        self._last_decode: float | None = None
        self._pts_offset = 0.0  # media seconds of earlier loops of a file
        self._file_t0: float | None = None
        self._decode_errors = 0
        self._bad_in_a_row = 0  # consecutive undecodable packets / corrupt frames
        self._state = SourceState.CONNECTING
        self._reason: str | None = None
        self._epoch = 0

    # -- public API ----------------------------------------------------------------

    def start(self) -> None:
        """Start the decode thread (once)."""
        if not self._thread.is_alive() and not self._finished.is_set():
            self._thread.start()

    def get(self, timeout: float | None = None) -> Frame | None:
        """The next frame, or None if none came within ``timeout`` seconds."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def peek(self, n: int) -> list[Frame]:
        """Up to ``n`` queued frames, oldest first, left in the queue (the drop policy still
        applies to them): a stream looks ahead at them without holding frames back."""
        with self._queue.mutex:
            return list(itertools.islice(self._queue.queue, n))

    @property
    def ended(self) -> bool:
        """Decoding has finished (end, error or stop) and every queued frame was taken."""
        return self._finished.is_set() and self._queue.empty()

    def stop(self) -> None:
        """Stop decoding and join the thread; idempotent and bounded in time."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(_JOIN_TIMEOUT_S)
            if self._thread.is_alive():
                logger.warning(
                    "source %s: decode thread still busy after stop; leaving it to exit",
                    self.spec.display,
                )
        if not self._thread.is_alive() and self._thread.ident is None:
            self._finished.set()

    def stats(self) -> SourceStats:
        with self._lock:
            first, last, n = self._first_decode, self._last_decode, self._decoded
            fps = (
                (n - 1) / (last - first)
                if first is not None and last is not None and last > first
                else 0.0
            )
            return SourceStats(
                n,
                self._queued,
                self._dropped,
                self._reconnects,
                fps,
                self._decode_errors,
                self._state,
                self._reason,
                self._epoch,
            )

    @property
    def state(self) -> SourceState:
        return self._state

    def _set_state(self, state: SourceState, reason: str | None = None) -> None:
        with self._lock:
            self._state, self._reason = state, reason

    # -- decode thread -------------------------------------------------------------

    def _run(self) -> None:
        try:
            if self.spec.is_live:
                self._run_live()
            else:
                self._run_file()
        except (_StoppedError, _DoneError):
            pass
        except SourceError as exc:
            self.error = exc
            logger.info("source %s: ended with error: %s", self.spec.stream_id, exc)
        except Exception as exc:
            self.error = SourceError(
                f"{self.spec.display}: decoding failed after {self._decoded} frames"
                f" ({type(exc).__name__}: {_why(exc, self.spec)}): "
                "check the input"
            )
            logger.debug("source %s: decoding failed", self.spec.display, exc_info=True)
        finally:
            if self.error is not None:
                self._set_state(SourceState.FAILED, str(self.error))
            else:
                self._set_state(SourceState.ENDED)
            self._finished.set()

    def _run_file(self) -> None:
        path = Path(self.spec.url)
        if self.spec.kind is SourceKind.FILE:
            if not path.exists():
                raise SourceError(f"{self.spec.display}: file not found: check the path")
            if path.is_dir():
                raise SourceError(
                    f"{self.spec.display}: is a directory, not a video file: give a video file"
                )
        while True:
            container, stream = self._open()
            try:
                self._decode_pass(container, stream, live=False)
            finally:
                container.close()
            if not self.settings.loop or self._stop.is_set():
                return
            logger.debug("source %s: looping", self.spec.display)

    def _run_live(self) -> None:
        s = self.settings
        delay = s.reconnect_initial_s
        failures = 0
        opened = False
        while not self._stop.is_set():
            try:
                container, stream = self._open()
            except FatalSourceError:
                raise
            except SourceError as exc:
                # never opened yet (camera down at start) or dropped: the same capped backoff
                failures += 1
                if s.reconnect_attempts is not None and failures > s.reconnect_attempts:
                    raise SourceError(
                        f"{exc} (gave up after {s.reconnect_attempts} reconnect attempts)"
                    ) from None
                self._set_state(
                    SourceState.RECONNECTING if opened else SourceState.CONNECTING, str(exc)
                )
                logger.warning(
                    "source %s: %s attempt %s failed (%s); retrying in %.1fs",
                    self.spec.display,
                    "reconnect" if opened else "connect",
                    failures,
                    exc,
                    delay,
                )
                self._sleep(delay)
                delay = min(delay * 2.0, s.reconnect_max_s)
                continue
            with self._lock:
                self._epoch = _capture_epoch()  # a new capture: ids never repeat an old one
            self._set_state(SourceState.RUNNING)
            if opened:
                with self._lock:
                    self._reconnects += 1
                logger.warning(
                    "source %s: reconnected (reconnect %s)", self.spec.display, self._reconnects
                )
            opened = True
            failures = 0
            decoded_before = self._decoded
            try:
                reason = self._decode_pass(container, stream, live=True)
            except _DroppedError as exc:
                reason = str(exc)
            finally:
                container.close()
            if self._decoded > decoded_before:
                delay = s.reconnect_initial_s  # it worked for a while: start the backoff afresh
            self._set_state(SourceState.RECONNECTING, reason)
            logger.warning(
                "source %s: stream dropped (%s); reconnecting in %.1fs",
                self.spec.display,
                reason,
                delay,
            )
            self._sleep(delay)
            delay = min(delay * 2.0, s.reconnect_max_s)

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise _StoppedError

    # -- opening -------------------------------------------------------------------

    def _av_options(self) -> dict[str, str]:
        s = self.settings
        opts = {"protocol_whitelist": PROTOCOL_WHITELIST[self.spec.kind.value]}
        if self.spec.kind is SourceKind.RTSP:
            opts.update(
                rtsp_transport=str(s.rtsp_transport), timeout=str(int(s.read_timeout_s * 1e6))
            )
        elif self.spec.kind in (SourceKind.HTTP, SourceKind.RTMP):
            opts["rw_timeout"] = str(int(s.read_timeout_s * 1e6))
        if self.spec.kind is SourceKind.HTTP and self.spec.hosts is not None:
            # a redirect's target host could not be checked: control-topic streams follow none
            opts["max_redirects"] = "0"
        return opts

    def _check_host(self) -> None:
        """The host policy, at every connect: the name and every address it resolves to."""
        policy = self.spec.hosts
        if policy is None or self.spec.kind is SourceKind.FILE:
            return
        parts = urlsplit(self.spec.url)
        host = parts.hostname or ""
        try:
            reason = policy.check(host, parts.port)
        except (OSError, UnicodeError) as exc:  # DNS down or name unknown: retried like a refusal
            raise SourceError(
                f"{self.spec.display}: cannot resolve host {host} ({_why(exc)}): check the name"
            ) from None
        if reason is not None:
            raise FatalSourceError(f"{self.spec.display}: {reason}")

    def _open_url(self) -> str:
        """The URL to connect to: with the ``source.credentials`` entry of its own host."""
        try:
            return with_credentials(self.spec.url, self.settings.credentials)
        except ConfigError as exc:  # a missing variable or file: retried, it may appear
            raise SourceError(f"{self.spec.display}: {exc}") from None

    def _check_size(self, width: int, height: int) -> None:
        limit = self.settings.max_pixels
        if width * height > limit:
            raise FatalSourceError(
                f"{self.spec.display}: frames of {width}x{height} = {width * height} pixels are"
                f" more than source.max_pixels={limit}: lower the camera's resolution or raise"
                " source.max_pixels"
            )

    def _open(self) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
        import av

        s = self.settings
        self._check_host()
        url = self._open_url()
        t0 = time.monotonic()
        accel = decode_options(s.decode, self.spec.display)  # NVDEC where present (hwaccel.py)
        try:
            container = av.open(
                url,
                mode="r",
                options=self._av_options(),
                timeout=(s.open_timeout_s, s.read_timeout_s),
                **accel,
            )
        except Exception as exc:
            if self._stop.is_set():
                raise _StoppedError from None
            raise self._open_error(exc, time.monotonic() - t0) from None
        if not container.streams.video:
            container.close()
            raise SourceError(
                f"{self.spec.display}: has no video stream: give a file or URL with video"
            )
        stream = container.streams.video[0]
        try:
            self._check_size(stream.codec_context.width or 0, stream.codec_context.height or 0)
        except FatalSourceError:
            container.close()
            raise
        stream.thread_type = "AUTO"
        if self.spec.is_live:
            # A live demuxer (RTSP: one packet per slice) may split an access unit over several
            # packets; without this flag the decoder takes each packet for a whole frame and
            # multi-slice frames come out with parts missing.
            stream.codec_context.flags2 |= av.codec.context.Flags2.chunks
        if not self.spec.is_live:  # live sources set it in _run_live, with their epoch
            self._set_state(SourceState.RUNNING)
        return container, stream

    def _open_error(self, exc: Exception, elapsed: float) -> SourceError:
        import av

        d = self.spec.display
        s = self.settings
        if self.spec.kind is SourceKind.FILE:
            if isinstance(exc, av.error.InvalidDataError):
                return SourceError(
                    f"{d}: not a video file (unrecognised or corrupt data): give an MP4/MKV/... video"
                )
            if isinstance(exc, PermissionError):
                return SourceError(f"{d}: permission denied: make the file readable")
            if isinstance(exc, FileNotFoundError):
                return SourceError(f"{d}: file not found: check the path")
            return SourceError(
                f"{d}: cannot open ({_why(exc, self.spec)}): check that it is a readable video file"
            )
        if isinstance(
            exc, av.error.HTTPUnauthorizedError | av.error.HTTPForbiddenError
        ) or "401" in str(exc):
            return SourceError(
                f"{d}: unauthorized: check the credentials in the URL, the source.credentials"
                f" entry of its host, or (run only) {ENV_RTSP_USERNAME}/{ENV_RTSP_PASSWORD}"
            )
        if isinstance(exc, av.error.HTTPNotFoundError) or "404" in str(exc):
            return SourceError(f"{d}: stream not found (404): check the path of the URL")
        if isinstance(exc, ConnectionRefusedError):
            return SourceError(
                f"{d}: connection refused: check host and port, and that the server runs"
            )
        timed_out = elapsed >= 0.9 * min(s.open_timeout_s, s.read_timeout_s)
        if isinstance(exc, TimeoutError | av.error.ExitError) or timed_out:
            return SourceError(
                f"{d}: no answer within {elapsed:.1f}s (open_timeout_s={s.open_timeout_s:g},"
                f" read_timeout_s={s.read_timeout_s:g}): check host, port, firewall and"
                f" rtsp_transport={s.rtsp_transport}"
            )
        return SourceError(
            f"{d}: cannot open ({_why(exc, self.spec)}): check the URL and that the server runs"
        )

    # -- decoding ------------------------------------------------------------------

    def _decode_pass(
        self,
        container: av.container.InputContainer,
        stream: av.video.stream.VideoStream,
        live: bool,
    ) -> str:
        """Decode until the end of this container; returns why it ended (live) or raises."""
        import av

        if self._file_t0 is None:
            self._file_t0 = (
                time.time()
            )  # a file's wall clock: first open + media time, across loops
        opened_at = self._file_t0
        mono0 = time.monotonic()
        first_pts: float | None = None
        last_pts = 0.0
        start_count, start_errors = self._decoded, self._decode_errors
        try:
            for packet in container.demux(stream):
                for vf in self._decode_packet(packet):
                    pts = (
                        float(vf.pts * vf.time_base)
                        if vf.pts is not None and vf.time_base is not None
                        else None
                    )
                    if first_pts is None and pts is not None:
                        first_pts = pts
                    if pts is not None:
                        last_pts = pts
                    self._emit(vf, pts, opened_at, mono0, first_pts, live)
        except (_StoppedError, _DoneError, _DroppedError, SourceError):
            raise
        except Exception as exc:
            if self._stop.is_set():
                raise _StoppedError from None
            if live:
                raise _DroppedError(_why(exc, self.spec)) from None
            if isinstance(exc, av.error.InvalidDataError | EOFError | av.error.EOFError):
                raise SourceError(
                    f"{self.spec.display}: corrupt or truncated video after {self._decoded - start_count} good frames:"
                    " re-encode or re-copy the file"
                ) from None
            raise
        if self._stop.is_set():
            raise _StoppedError
        if live:
            return "end of stream"
        if self._decode_errors == start_errors:  # skipped corrupt parts are counted already
            self._check_complete(stream, self._decoded - start_count)
        fps = float(stream.average_rate) if stream.average_rate else 0.0
        self._pts_offset += last_pts - (first_pts or 0.0) + (1.0 / fps if fps > 0 else 0.0)
        return "end of file"

    def _decode_packet(self, packet: Any) -> list[Any]:
        """The good frames of one packet: a packet the decoder refuses and a frame it flags
        corrupt are skipped and counted; too many in a row end the stream (SourceError) or,
        for a live source, its connection (it reconnects)."""
        import av

        try:
            frames = packet.decode()
        except av.error.FFmpegError as exc:
            if isinstance(exc, av.error.EOFError):
                raise
            self._bad(f"undecodable packet ({_why(exc, self.spec)})")
            return []
        good = []
        for vf in frames:
            if vf.is_corrupt:
                self._bad("corrupt frame")
                continue
            self._bad_in_a_row = 0
            good.append(vf)
        return good

    def _bad(self, what: str) -> None:
        with self._lock:
            self._decode_errors += 1
            self._bad_in_a_row += 1
            n, total = self._bad_in_a_row, self._decode_errors
        logger.debug("source %s: skipped %s (decode errors: %s)", self.spec.display, what, total)
        limit = self.settings.max_decode_errors
        if n < limit:
            return
        self._bad_in_a_row = 0
        msg = (
            f"{self.spec.display}: {n} decode errors in a row (last: {what}) after"
            f" {self._decoded} good frames (max_decode_errors={limit})"
        )
        if self.spec.is_live:
            raise _DroppedError(msg)
        raise SourceError(f"{msg}: re-encode or re-copy the file")

    def _check_complete(self, stream: av.video.stream.VideoStream, decoded: int) -> None:
        expected = int(stream.frames or 0)
        if decoded == 0:
            raise SourceError(
                f"{self.spec.display}: no frame could be decoded: the video is empty or corrupt"
            )
        if expected > 0 and decoded < expected * 0.9:
            raise SourceError(
                f"{self.spec.display}: truncated video: decoded {decoded} of {expected} frames: re-encode or re-copy the file"
            )

    def _emit(
        self,
        vf: Any,
        pts: float | None,
        opened_at: float,
        mono0: float,
        first_pts: float | None,
        live: bool,
    ) -> None:
        s = self.settings
        if s.max_frames is not None and self._decoded >= s.max_frames:
            raise _DoneError
        if self._stop.is_set():
            raise _StoppedError
        if vf.width * vf.height > s.max_pixels:
            self._check_size(vf.width, vf.height)
        frame_num = self._decoded
        now = time.time()
        with self._lock:
            self._decoded += 1
            self._first_decode = self._first_decode if self._first_decode is not None else now
            self._last_decode = now
        rel = (pts - (first_pts or 0.0)) if pts is not None else None
        if live:
            wall_ts, out_pts = now, pts
        else:
            media = self._pts_offset + (rel if rel is not None else 0.0)
            wall_ts = opened_at + media
            out_pts = self._pts_offset + pts if pts is not None else None
            if s.realtime and rel is not None:
                self._sleep(max(0.0, mono0 + rel - time.monotonic()))
        if frame_num % s.every == 0:
            frame = Frame(
                self.spec.stream_id,
                frame_num,
                out_pts,
                wall_ts,
                pixels_of(vf),  # converted to BGR / gray when a stage asks (pictures.py)
                decoded_at=now,
                epoch=self._epoch,
            )
            self._put(frame, live)
        if s.max_frames is not None and self._decoded >= s.max_frames:
            raise _DoneError

    def _put(self, frame: Frame, live: bool) -> None:
        policy = self.settings.drop_policy if live else DropPolicy.BLOCK
        if policy is DropPolicy.BLOCK:
            while True:
                try:
                    self._queue.put(frame, timeout=0.1)
                    break
                except queue.Full:
                    if self._stop.is_set():
                        raise _StoppedError from None
        elif policy is DropPolicy.DROP_LATEST:
            try:
                self._queue.put_nowait(frame)
            except queue.Full:
                with self._lock:
                    self._dropped += 1
                return
        else:  # DROP_OLDEST
            while True:
                try:
                    self._queue.put_nowait(frame)
                    break
                except queue.Full:
                    try:
                        self._queue.get_nowait()
                        with self._lock:
                            self._dropped += 1
                    except queue.Empty:
                        pass
        with self._lock:
            self._queued += 1


def _why(exc: BaseException, spec: SourceSpec | None = None) -> str:
    """A short one-line reason from a PyAV/OS error, without file names (callers add the display
    form); the source's URL, should it appear, is replaced by its redacted form."""
    strerror = getattr(exc, "strerror", None)
    text = str(strerror) if strerror else str(exc) or type(exc).__name__
    if spec is not None and spec.url != spec.display:
        text = text.replace(spec.url, spec.display)
    return " ".join(redact_text(text).split())  # credentials added at connect: masked too
