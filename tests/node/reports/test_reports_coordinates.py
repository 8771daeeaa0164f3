"""Detector boxes (index coordinates) reach SCOORD/GSPS in DICOM image coordinates: half a pixel further on."""

from __future__ import annotations

import numpy as np

from node.reports.coordinates import box_polyline, to_image


def test_first_pixel_centre_maps_to_half_a_pixel():
    # a box around exactly the first pixel: its edges in index coordinates are -0.5 and 0.5
    assert to_image((-0.5, -0.5, 0.5, 0.5)) == (0.0, 0.0, 1.0, 1.0)
    assert to_image((3.0, 4.0, 10.5, 20.25)) == (3.5, 4.5, 11.0, 20.75)


def test_polyline_is_closed_and_in_image_coordinates():
    line = box_polyline((10.0, 20.0, 30.0, 40.0))
    assert line.shape == (5, 2)
    np.testing.assert_array_equal(line[0], line[-1])
    np.testing.assert_array_equal(line.min(axis=0), [10.5, 20.5])
    np.testing.assert_array_equal(line.max(axis=0), [30.5, 40.5])
