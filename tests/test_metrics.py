import keras
import numpy as np
import pytest

from keras_fastfcn import metrics as M


def official_batch_counts(pred, target, nclass):
    """The official batch_pix_accuracy / batch_intersection_union, in numpy.

    Official labels use -1 for "ignore" and the functions add 1 so that 0 means
    ignored; our 255 is mapped to -1 first.
    """
    target = np.where(target == 255, -1, target).astype("int64") + 1
    predict = pred.astype("int64") + 1
    labeled = np.sum(target > 0)
    correct = np.sum((predict == target) * (target > 0))
    predict = predict * (target > 0).astype(predict.dtype)
    intersection = predict * (predict == target)
    area_inter, _ = np.histogram(intersection, bins=nclass, range=(1, nclass))
    area_pred, _ = np.histogram(predict, bins=nclass, range=(1, nclass))
    area_lab, _ = np.histogram(target, bins=nclass, range=(1, nclass))
    return correct, labeled, area_inter, area_pred + area_lab - area_inter


def random_batch(rng, nclass, shape, ignore_frac=0.2, absent=()):
    labels = rng.randint(0, nclass, shape)
    preds = np.where(rng.rand(*shape) < 0.6, labels, rng.randint(0, nclass, shape))
    for c in absent:  # keep class c out of both
        labels[labels == c] = (c + 1) % nclass
        preds[preds == c] = (c + 1) % nclass
    labels[rng.rand(*shape) < ignore_frac] = 255
    return labels, preds


@pytest.mark.parametrize("absent", [(), (2, 5)])
def test_matches_official_formulas(rng, absent):
    nclass = 7
    metric = M.SegmentationMetric(nclass)
    correct = labeled = 0
    inter = union = 0
    for _ in range(4):
        labels, preds = random_batch(rng, nclass, (2, 23, 31), absent=absent)
        metric.update(labels, preds)
        c, lab, i, u = official_batch_counts(preds, labels, nclass)
        correct, labeled, inter, union = correct + c, labeled + lab, inter + i, union + u
    pix_acc = 1.0 * correct / (np.spacing(1) + labeled)
    iou = 1.0 * inter / (np.spacing(1) + union)
    res = metric.result()
    assert res["pixAcc"] == pytest.approx(pix_acc, abs=1e-12)
    assert res["mIoU"] == pytest.approx(iou.mean(), abs=1e-12)
    np.testing.assert_allclose(res["IoU"], iou, atol=1e-12)
    assert res["labeled_pixels"] == labeled
    present = union > 0
    assert res["mIoU_present"] == pytest.approx(iou[present].mean(), abs=1e-12)
    assert res["classes_present"] == nclass - len(absent)
    if absent:
        # The official mean counts absent classes as 0: strictly lower.
        assert res["mIoU"] < res["mIoU_present"]
        assert res["mIoU"] == pytest.approx(res["mIoU_present"] * (nclass - 2) / nclass)
        assert [c["present"] for c in res["per_class"]].count(False) == 2


def test_scores_are_argmaxed_like_official(rng):
    labels, preds = random_batch(rng, 4, (1, 9, 11))
    scores = rng.randn(1, 9, 11, 4)
    a, b = M.SegmentationMetric(4), M.SegmentationMetric(4)
    a.update(labels, scores)
    b.update(labels, scores.argmax(-1))
    assert a.result() == b.result()


def test_mean_over_present_matches_keras_mean_iou(rng):
    nclass = 6
    ours = M.SegmentationMetric(nclass)
    keras_miou = M.mean_iou(nclass)
    assert isinstance(keras_miou, keras.metrics.MeanIoU)
    pix = M.PixelAccuracy()
    for absent in [(), (3,), (3, 4)]:
        labels, preds = random_batch(rng, nclass, (2, 17, 19), absent=absent)
        logits = np.eye(nclass)[preds] * 3.0 + rng.rand(*preds.shape, nclass)  # argmax == preds
        ours.update(labels, preds)
        keras_miou.update_state(labels, logits)
        pix.update_state(labels, logits)
    res = ours.result()
    assert float(keras_miou.result()) == pytest.approx(res["mIoU_present"], abs=1e-5)
    assert float(pix.result()) == pytest.approx(res["pixAcc"], abs=1e-6)
    pix.reset_state()
    assert float(pix.result()) == 0.0


def test_keras_metrics_in_compile_and_fit(rng):
    nclass = 3
    inputs = keras.Input((8, 8, 3))
    outputs = {"logits": keras.layers.Conv2D(nclass, 1, name="logits")(inputs),
               "aux_logits": keras.layers.Conv2D(nclass, 1, name="aux_logits")(inputs)}
    model = keras.Model(inputs, outputs)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
    model.compile(optimizer="sgd", loss={"logits": loss, "aux_logits": loss},
                  metrics={"logits": M.segmentation_metrics(nclass)})
    x = rng.rand(4, 8, 8, 3).astype("float32")
    y = rng.randint(0, nclass, (4, 8, 8))
    y[:, :2] = 255
    logs = model.evaluate(x, {"logits": y, "aux_logits": y}, verbose=0, return_dict=True)
    preds = model.predict(x, verbose=0)["logits"].argmax(-1)
    ref = M.SegmentationMetric(nclass)
    ref.update(y, preds)
    assert logs["logits_pixel_accuracy"] == pytest.approx(ref.result()["pixAcc"], abs=1e-6)
    assert logs["logits_mean_iou"] == pytest.approx(ref.result()["mIoU_present"], abs=1e-5)
    hist = model.fit(x, {"logits": y, "aux_logits": y}, epochs=1, verbose=0)
    assert 0.0 <= hist.history["logits_pixel_accuracy"][0] <= 1.0


def test_pixel_accuracy_serializes():
    metric = M.PixelAccuracy(ignore_class=11, name="acc")
    clone = keras.metrics.deserialize(keras.metrics.serialize(metric))
    assert isinstance(clone, M.PixelAccuracy)
    assert clone.ignore_class == 11 and clone.name == "acc"


def test_result_format_and_names():
    metric = M.SegmentationMetric(3, class_names=["sky", "road", "car"])
    metric.update(np.array([[0, 1, 1, 255]]), np.array([[0, 1, 0, 2]]))
    res = metric.result()
    assert [c["name"] for c in res["per_class"]] == ["sky", "road", "car"]
    text = M.format_results(res)
    assert "road" in text and "absent" in text and "mIoU_present" in text
    assert text.splitlines()[-1].startswith("No labeled pixels of: car.")  # 0/255 masks hint
    metric.update(np.array([[2]]), np.array([[2]]))
    assert "No labeled pixels" not in M.format_results(metric.result())
    assert res["pixAcc"] == pytest.approx(2 / 3)
    # sky: inter 1, union 2; road: inter 1, union 2; car absent -> official mean /3
    assert res["mIoU"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert res["mIoU_present"] == pytest.approx(0.5)


def test_bad_values_raise():
    metric = M.SegmentationMetric(3)
    with pytest.raises(ValueError, match="outside 0..2"):
        metric.update(np.array([[0, 3]]), np.array([[0, 1]]))
    with pytest.raises(ValueError, match="predictions hold values"):
        metric.update(np.array([[0, 1]]), np.array([[0, 5]]))
    with pytest.raises(ValueError, match="differ in shape"):
        metric.update(np.zeros((2, 3), int), np.zeros((3, 2), int))
    with pytest.raises(ValueError, match="classes on their last axis"):
        metric.update(np.zeros((2, 3), int), np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="num_classes"):
        M.SegmentationMetric(0)
    # Nothing was counted by the failed updates.
    assert metric.confusion_matrix.sum() == 0
