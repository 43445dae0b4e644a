"""Face detection and alignment: whole photos in, aligned face crops (and a verdict per face) out.

Layer rule: this package sits below data/store.py and data/prepare.py and imports only facetl.errors,
facetl.preprocessing, facetl.runfolder and facetl.data.images.
"""
from facetl.data.faces.align import TEMPLATES, align_face, alignment_transform, reframe, template_points
from facetl.data.faces.detect import (LANDMARKS, DetectedFace, FaceDetector, MTCNNDetector, create_detector,
                                      detector_names)
from facetl.data.faces.photos import (FACES_CSV_HEADER, LANDMARK_SOURCES, MULTI_FACE_RULES, NO_FACE, PhotoFace,
                                      PhotoFaces, aligned_landmarks, check_alignment, detector_for, face_rows,
                                      faces_in_photo, faces_in_photos, faces_of_frame)

__all__ = ["TEMPLATES", "align_face", "alignment_transform", "reframe", "template_points", "LANDMARKS", "DetectedFace",
           "FaceDetector", "MTCNNDetector", "create_detector", "detector_names", "MULTI_FACE_RULES", "NO_FACE",
           "PhotoFace", "PhotoFaces", "LANDMARK_SOURCES", "aligned_landmarks", "check_alignment",
           "FACES_CSV_HEADER", "face_rows", "detector_for", "faces_in_photo", "faces_in_photos", "faces_of_frame"]
