"""Reference profiles from moatkit datasets: the glue between data/ (splits, records) and serving/monitoring
(which reads only SavedModels and plain lists). Used by `moat export` (profile written before the version is
published) and `moat monitor profile` (for versions exported without one)."""
from __future__ import annotations

from pathlib import Path

from moatkit.data.core.errors import ConfigError
from moatkit.data.dataset import field_value, read_records


def _texts_and_labels(data_dir: Path, *, text_field: str, label_field: str | None) -> tuple[list[str], list | None]:
    records = read_records(data_dir)
    texts, labels = [], []
    for record in records:
        text = field_value(record, text_field)
        if text is None or not str(text).strip():
            continue
        texts.append(str(text))
        labels.append(None if label_field is None else field_value(record, label_field))
    if label_field is None or all(label is None for label in labels):
        return texts, None
    return texts, [str(label) for label in labels]


def profile_from_data(version_dir: str | Path, data: str | Path, *, vocabulary_data: str | Path | None = None,
                      text_field: str = "text", label_field: str | None = "label", classifier: bool = True) -> dict:
    """`data`: a split dir (its dev/ is the reference, its train/ the OOV vocabulary) or a dataset dir."""
    from moatkit.serving.monitoring.profile import build_profile

    data = Path(data)
    if not data.exists():
        raise ConfigError(f"profile data '{data}' does not exist", fix="pass the dev split the model was selected on")
    dev = data / "dev" if (data / "dev" / "manifest.json").is_file() else data
    vocabulary = Path(vocabulary_data) if vocabulary_data else (data / "train" if dev != data else None)
    texts, labels = _texts_and_labels(dev, text_field=text_field, label_field=label_field if classifier else None)
    vocabulary_texts = (_texts_and_labels(vocabulary, text_field=text_field, label_field=None)[0]
                        if vocabulary is not None and (vocabulary / "manifest.json").is_file() else None)
    profile = build_profile(version_dir, texts, labels, vocabulary_texts=vocabulary_texts, source=str(dev))
    return {"monitoring_profile": {"texts": profile["texts"], "source": str(dev),
                                   "calibration": profile.get("calibration")}}


def export_profile_hook(log=print):
    """The `extra` hook of models.export.export_text_model: profiles the staged version from the dev split that
    moat_task.json records (fine-tunes from before that field get a hint instead)."""
    def hook(staging: Path, task: dict) -> dict:
        split_dir = task.get("split_dir")
        if not split_dir or not Path(split_dir).is_dir():
            log("no dev split recorded in moat_task.json: the version has no monitoring profile; write one with "
                "`moat monitor profile --set data=<split dir>`")
            return {}
        return profile_from_data(staging, split_dir, label_field=task.get("target") or "label",
                                 classifier=bool(task.get("labels")))
    return hook
