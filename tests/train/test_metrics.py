import numpy as np
import pytest

from napari_xt.train.metrics import confusion_matrix, detection_scores, iou_per_class, match_points


def test_iou_by_hand():
    truth = np.array([[0, 0, 1, 1], [0, 2, 2, 1]])
    predicted = np.array([[0, 1, 1, 1], [0, 2, 0, 1]])
    confusion = confusion_matrix(truth, predicted, 3)
    # class 0: tp 2, fp 1 (pixel (1,2)), fn 1 (pixel (0,1)) → 2/4; class 1: tp 3, fp 1 → 3/4; class 2: 1/2
    np.testing.assert_allclose(iou_per_class(confusion), [0.5, 0.75, 0.5])
    valid = np.ones_like(truth, bool)
    valid[0, 1] = False
    np.testing.assert_allclose(iou_per_class(confusion_matrix(truth, predicted, 3, valid))[0], 2 / 3)
    assert np.isnan(iou_per_class(confusion_matrix(truth, predicted, 4))[3])


def test_matching_is_one_to_one_by_score():
    truth = np.array([[0.0, 0.0], [10.0, 0.0]])
    predicted = np.array([[1.0, 0.0], [0.5, 0.0], [30.0, 0.0]])
    matched = match_points(truth, predicted, np.array([0.5, 0.9, 0.8]), tolerance=3.0)
    assert matched.tolist() == [-1, 0, -1]  # the best-scored takes truth 0; the other finds nothing within 3 px


def test_detection_scores_by_hand():
    truth = np.array([[0, 0], [100, 100], [200, 200]], float)
    truth_label = np.array([0, 1, 1])
    predicted = np.array([[1, 1], [101, 99], [400, 400]], float)
    predicted_label = np.array([0, 0, 1])  # the second is in the right place with the wrong class
    scores = detection_scores(truth, truth_label, predicted, predicted_label, np.array([0.9, 0.8, 0.7]), 5.0, 2)
    assert scores["all"]["true_positives"] == 2 and scores["all"]["false_positives"] == 1
    assert scores["all"]["precision"] == pytest.approx(2 / 3) and scores["all"]["recall"] == pytest.approx(2 / 3)
    assert scores[0]["true_positives"] == 1 and scores[0]["false_positives"] == 1 and scores[0]["recall"] == 1.0
    assert scores[1]["true_positives"] == 0 and scores[1]["f1"] == 0.0 and scores[1]["false_negatives"] == 2


def test_seam_score_tells_region_borders_from_lines_inside_regions():
    import numpy as np

    from napari_xt.train.metrics import seam_score

    at_border = np.zeros((32, 32), np.uint8)
    at_border[:, 8:] = 1  # the label changes where two regions of 8 meet
    score = seam_score(at_border, 8)
    assert score["border"] == pytest.approx(32 / (2 * 3 * 32)) and score["inside"] == 0 and score["ratio"] == np.inf
    inside = np.zeros((32, 32), np.uint8)
    inside[:, 12:] = 1  # halfway into a region
    score = seam_score(inside, 8)
    assert score["border"] == 0 and score["inside"] == pytest.approx(32 / (2 * 12 * 32)) and score["ratio"] == 0
    ramp = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (32, 1))  # probabilities: a smooth ramp has no seam
    assert seam_score(ramp, 8)["ratio"] == pytest.approx(1.0)
    valid = np.ones((32, 32), bool)
    valid[:, 7] = False  # the only changing pair is not valid
    assert seam_score(at_border, 8, valid)["border"] == 0
    with pytest.raises(ValueError, match="same 2-D shape"):
        seam_score(at_border, 8, valid[:16])
