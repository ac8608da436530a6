"""Gallery sources for indexing: a folder of images or the sampled frames of a video.

A source yields :class:`GalleryItem` s in a fixed order, so that an interrupted indexing run can resume from a
position (``iter_items(start)``) and get exactly the items it has not processed yet.
"""
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np
from detectron2.data import detection_utils as utils
from PIL import Image

from person_search.data.image_io import read_image_file

__all__ = [
    "IMAGE_EXTENSIONS",
    "GalleryItem",
    "SearchError",
    "UNREADABLE_IMAGE_ERRORS",
    "ImageFolderSource",
    "VideoSource",
    "open_gallery_source",
    "read_video_frames",
    "shorten",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


# What PIL (through read_image_file) raises for missing, truncated, unidentified or corrupt files, and for
# headers claiming more pixels than Image.MAX_IMAGE_PIXELS allows (DecompressionBombError is no OSError).
UNREADABLE_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class SearchError(ValueError):
    """Bad input to gallery indexing or search; the message names the file or argument and what was expected."""


def shorten(names, limit=20):
    """``names`` joined by commas, the ones past ``limit`` counted: "a, b and 3 more"."""
    names = list(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


@dataclass
class GalleryItem:
    """One gallery picture.

    Attributes:
        position: index of the item in the source's order (0-based).
        path: image path relative to the gallery folder, or the video's file name.
        frame: video frame index (None for images).
        time: video timestamp in seconds (None for images, or when the video reports no frame rate).
        image: the picture as an HxWxC uint8 array in the requested format, or None when it cannot be read.
    """

    position: int
    path: str
    frame: Optional[int]
    time: Optional[float]
    image: Optional[np.ndarray]

    def record(self):
        """The JSON record of this item stored in the index manifest."""
        return {"path": self.path, "frame": self.frame, "time": self.time}


class ImageFolderSource:
    """Every image below a folder (recursive; extensions in :data:`IMAGE_EXTENSIONS`), sorted by relative path."""

    kind = "folder"

    def __init__(self, root, image_format="BGR"):
        self.root = os.path.abspath(root)
        self.image_format = image_format
        self.paths, left_out = [], []
        for folder, subfolders, files in os.walk(self.root):  # symbolic links to folders are not followed (cycles)
            for name in files + [d for d in subfolders if os.path.islink(os.path.join(folder, d))]:
                path = os.path.relpath(os.path.join(folder, name), self.root)
                is_image = name.lower().endswith(IMAGE_EXTENSIONS) and name not in subfolders
                (self.paths if is_image else left_out).append(path)
        self.paths.sort()
        if left_out:
            logger.info(f"Left out of gallery {self.root}: {len(left_out)} files that are no images "
                        f"({', '.join(IMAGE_EXTENSIONS)}) or linked folders: {shorten(sorted(left_out), 10)}")
        if not self.paths:
            extensions = ", ".join(IMAGE_EXTENSIONS)
            raise SearchError(f"gallery folder {self.root} contains no images (extensions {extensions})")
        self._listing_sha256 = self._hash_listing()

    def __len__(self):
        return len(self.paths)

    def describe(self):
        """What identifies this gallery: its folder and the hash of its sorted image list with each file's size and
        modification time (when the source was opened), so that a picture replaced under the same name is seen."""
        return {"kind": self.kind, "path": self.root, "listing_sha256": self._listing_sha256}

    def _hash_listing(self):
        listing = []
        for path in self.paths:
            try:
                stat = os.stat(os.path.join(self.root, path))
                listing.append([path, stat.st_size, stat.st_mtime_ns])
            except OSError:  # e.g. a broken symbolic link: skipped as unreadable when indexed
                listing.append([path, None, None])
        return hashlib.sha256(json.dumps(listing).encode()).hexdigest()

    def iter_items(self, start=0):
        """Items from position ``start`` on; an unreadable image comes with ``image`` None."""
        for position in range(start, len(self.paths)):
            path = self.paths[position]
            yield GalleryItem(position, path, None, None, self._read(os.path.join(self.root, path)))

    def _read(self, path):
        try:
            return read_image_file(path, self.image_format)
        except UNREADABLE_IMAGE_ERRORS as e:
            logger.debug(f"cannot read {path}: {e}")
            return None


class VideoSource:
    """Every ``every``-th frame of a video read with OpenCV (frames 0, every, 2*every, ...)."""

    kind = "video"

    def __init__(self, path, every=1, image_format="BGR"):
        if every < 1:
            raise SearchError(f"video frame step must be >= 1, got {every}")
        self.path = os.path.abspath(path)
        self.every = int(every)
        self.image_format = image_format
        capture = self._open()
        self.fps = float(capture.get(cv2.CAP_PROP_FPS)) or None
        self.frame_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))  # an estimate for some containers
        capture.release()

    def __len__(self):
        """Expected number of sampled frames (from the container's frame count, which may be approximate)."""
        return (max(self.frame_count, 0) + self.every - 1) // self.every

    def describe(self):
        stat = os.stat(self.path)
        return {"kind": self.kind, "path": self.path, "every": self.every, "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns, "fps": self.fps}

    def iter_items(self, start=0):
        """Sampled frames from sample position ``start`` on (earlier frames are grabbed without decoding)."""
        capture = self._open()
        try:
            frame = 0
            while True:
                position, offset = divmod(frame, self.every)
                if offset or position < start:
                    if not capture.grab():
                        return
                else:
                    ok, bgr = capture.read()
                    if not ok:
                        return
                    time = frame / self.fps if self.fps else None
                    yield GalleryItem(position, os.path.basename(self.path), frame, time, self._convert(bgr))
                frame += 1
        finally:
            capture.release()

    def _open(self):
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"video file {self.path} does not exist")
        capture = cv2.VideoCapture(self.path)
        if not capture.isOpened():
            raise SearchError(f"OpenCV cannot open video {self.path}")
        return capture

    def _convert(self, bgr):
        if self.image_format == "BGR":
            return bgr
        return utils.convert_PIL_to_numpy(Image.fromarray(bgr[:, :, ::-1]), self.image_format)


def open_gallery_source(gallery, *, video_every=1, image_format="BGR"):
    """A folder path gives an :class:`ImageFolderSource`, a file path a :class:`VideoSource`."""
    if os.path.isdir(gallery):
        return ImageFolderSource(gallery, image_format)
    if os.path.isfile(gallery):
        if gallery.lower().endswith(IMAGE_EXTENSIONS):
            raise SearchError(f"gallery {gallery} is an image file: give a folder of images, or a video file")
        return VideoSource(gallery, video_every, image_format)
    raise FileNotFoundError(f"gallery {gallery} is neither a folder of images nor a video file")


def read_video_frames(path, frames, image_format="BGR"):
    """Decode the given frame indices of a video in one sequential pass (exact, unlike seeking).

    Returns:
        dict frame index -> HxWxC uint8 image; frames past the end of the video are missing from it.
    """
    source = VideoSource(path, 1, image_format)
    images = {}
    capture = source._open()
    try:
        frame = 0
        for target in sorted(set(int(f) for f in frames)):
            while frame < target:  # grab() skips a frame without decoding it
                if not capture.grab():
                    return images
                frame += 1
            ok, bgr = capture.read()
            if not ok:
                return images
            images[target] = source._convert(bgr)
            frame += 1
    finally:
        capture.release()
    return images
