"""A camera stream's faces followed over time: each keeps its track number, and its labels are smoothed.

This is `facetl predict --smooth` on a stream instead of a video, with the video path's own parts
(inference/video.py): one FaceTracker per stream matches each answered frame's faces to the faces of
the frames before, and each run's ProbabilitySmoother keeps an exponential moving average of every
track's probabilities with time constant `seconds` (a frame `dt` seconds after the track's last moves
it 1 - exp(-dt / seconds) of the way to its own answer). Time is the frame's arrival at the server, in
seconds since the stream opened: a browser sends a frame as soon as it is drawn, and a client's clock
cannot be trusted to run forward. The smoothed answer is the one given; the frame's own is kept beside it.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from facetl.inference.video import FaceTracker, ProbabilitySmoother
from facetl.serve.reader import PhotoAnswer, run_answer
from facetl.serve.runs import ServedRun

DEFAULT_SECONDS = 0.5   # serve --smooth: as the video guide's example; a real change shows within ~0.35 s


class StreamSmoothing:
    """The tracks and smoothed labels of one stream: fed every answered frame, in order."""

    def __init__(self, runs: list[ServedRun], seconds: float):
        self.classifiers = {run.name: run.classifier for run in runs}
        self.tracker = FaceTracker()
        self.smoothers = {run.name: ProbabilitySmoother(seconds) for run in runs}

    def answer(self, photo: PhotoAnswer, time_s: float) -> dict:
        """The photo API's answer as JSON, each face with its `track`, each run's answer smoothed, and the
        frame's own answer as that run's `raw`."""
        body = dataclasses.asdict(photo)
        tracks = self.tracker.update([dataclasses.astuple(face.box) for face in photo.faces],
                                     [face.score for face in photo.faces], time_s)
        for face, track in zip(body["faces"], tracks):
            face["track"] = track
            for name, raw in face["runs"].items():
                classifier = self.classifiers[name]
                probs = np.array([raw["probabilities"][c] for c in classifier.class_names])
                smoothed = self.smoothers[name](track, time_s, probs)
                face["runs"][name] = {**dataclasses.asdict(run_answer(classifier, smoothed)), "raw": raw}
        for smoother in self.smoothers.values():
            smoother.keep_only(self.tracker.live)
        return body
