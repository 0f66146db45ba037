"""A loopback RTSP server for the tests: serves an H.264 MP4 forever (GStreamer RTSP server).

Run by Debian's ``/usr/bin/python3`` (``gi`` with GstRtspServer; ``make system`` installs it):

    /usr/bin/python3 tests/gst_rtsp_serve.py --port 8554 --file out/sample.mp4 --path /cam

The clip's H.264 access units are read once (``qtdemux ! h264parse``, no re-encode) and
pushed into an ``appsrc`` at the clip's frame rate, round and round, like a live camera:
``appsrc ! h264parse ! rtph264pay name=pay0``. The media is shared by all clients.
Prints ``READY`` once it listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def read_access_units(path: str) -> tuple[list[bytes], Any, int]:
    """(access units in byte-stream form, their caps, frame rate) of the MP4's first video track."""
    pipe = Gst.parse_launch(
        f'filesrc location="{path}" ! qtdemux ! h264parse config-interval=-1 '
        "! video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=sink sync=false"
    )
    sink = pipe.get_by_name("sink")
    pipe.set_state(Gst.State.PLAYING)
    units: list[bytes] = []
    caps = None
    while True:
        sample = sink.emit("pull-sample")
        if sample is None:
            break
        caps = sample.get_caps()
        buf = sample.get_buffer()
        ok, info = buf.map(Gst.MapFlags.READ)
        if ok:
            units.append(bytes(info.data))
            buf.unmap(info)
    pipe.set_state(Gst.State.NULL)
    if not units or caps is None:
        raise SystemExit(f"ERROR: no H.264 video in {path}")
    s = caps.get_structure(0)
    ok, num, den = s.get_fraction("framerate")
    fps = max(1, round(num / den)) if ok and den else 25
    return units, caps, fps


class Feeder:
    """Pushes the access units into one media's appsrc at the frame rate, looping."""

    def __init__(self, appsrc: Any, units: list[bytes], fps: int) -> None:
        self.appsrc, self.units, self.fps = appsrc, units, fps
        self.i = 0
        GLib.timeout_add(max(1, round(1000 / fps)), self.push)

    def push(self) -> bool:
        data = self.units[self.i % len(self.units)]
        self.i += 1
        buf = Gst.Buffer.new_wrapped(data)
        buf.duration = Gst.SECOND // self.fps
        ret = self.appsrc.emit("push-buffer", buf)
        return bool(ret == Gst.FlowReturn.OK)  # False stops the timer once the media is gone


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--file", required=True)
    ap.add_argument("--path", default="/cam")
    ap.add_argument("--host", default="127.0.0.1")
    args = ap.parse_args()

    Gst.init(None)
    units, caps, fps = read_access_units(args.file)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f'( appsrc name=src is-live=true do-timestamp=true format=time caps="{caps.to_string()}" '
        "! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 config-interval=-1 )"
    )
    factory.set_shared(True)
    feeders: list[Feeder] = []

    def on_configure(_factory: Any, media: Any) -> None:
        appsrc = media.get_element().get_child_by_name("src")
        feeders.append(Feeder(appsrc, units, fps))

    factory.connect("media-configure", on_configure)
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        print(f"ERROR: cannot listen on {args.host}:{args.port}", flush=True)
        return 1
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    parent = os.getppid()

    def orphaned() -> bool:  # the test run died without stopping us: exit too
        if os.getppid() != parent:
            loop.quit()
            return False
        return True

    GLib.timeout_add_seconds(1, orphaned)
    print(
        f"READY rtsp://{args.host}:{args.port}{args.path} {len(units)} frames {fps} fps", flush=True
    )
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
