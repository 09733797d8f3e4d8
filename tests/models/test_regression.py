"""mr-intensity: regression on the −4..+4 mean rating, exported with a `regress` signature."""
import numpy as np
import pytest


@pytest.fixture(scope="module")
def intensity_run(tmp_path_factory, minilm_dir, mr_dir):
    from moatkit.models.finetune import FinetuneConfig, finetune

    run_dir = tmp_path_factory.mktemp("intensity") / "run"
    return finetune(FinetuneConfig(task="mr-intensity", run_dir=str(run_dir), max_train_examples=480,
                                   max_eval_examples=300, epochs=2, max_length=48, learning_rate=3e-4), verbose=0)


def test_regression_metrics(intensity_run):
    test = intensity_run["test"]
    assert intensity_run["labels"] is None and intensity_run["task"]["kind"] == "regression"
    assert test["pearson"] >= 0.55, test  # a constant predictor scores 0; measured here: 0.69
    assert set(test) >= {"pearson", "spearman", "mae", "rmse"} and test["mae"] < 2.0


def test_regress_signature_matches_predict(intensity_run, tmp_path):
    import tensorflow as tf

    from moatkit.models.export import ExportConfig, export_text_model

    exported = export_text_model(ExportConfig(model_dir=intensity_run["saved_model_dir"], repo=str(tmp_path),
                                              name="intensity"))
    assert exported["signatures"] == ["embed", "regress", "serving_default"]
    loaded = tf.saved_model.load(exported["version_dir"])
    texts = [b"a wonderful, moving film", b"a dull, lifeless and badly acted mess"]
    examples = [tf.train.Example(features=tf.train.Features(feature={
        "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[t]))})).SerializeToString() for t in texts]
    predicted = loaded.signatures["serving_default"](text=tf.constant(texts))["score"].numpy()
    regressed = loaded.signatures["regress"](inputs=tf.constant(examples))["outputs"].numpy()
    np.testing.assert_allclose(predicted, regressed, atol=1e-6)
    assert predicted[0] > predicted[1]  # scores are on the rating scale: positive review above negative
