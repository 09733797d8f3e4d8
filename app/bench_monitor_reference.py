"""Reference bench: the monitor's drift streams run through the field's drift libraries, side by side.

Runs in its OWN virtual environment (e.g. /work/scratch/venv-driftref), never in moatkit's: alibi-detect is under
the Business Source License (bench use only; moatkit must never import it), and Evidently 0.7 / alibi-detect pin
numpy, pandas, protobuf and TensorFlow versions that clash with moatkit's own environment. This script does not
import moatkit; it reads the precomputed arrays only:

    {k}_probs.npy (n,2 softmax), {k}_emb.npy (n,384 sentence embeddings), {k}_rows.json ([text, label] list)
    for k in dev (reference), mr (in-domain), amazon and nyt (shifted domains).

Streams (window = 200 texts, evaluated every 50 texts, all seeded):
  1. false alarms: windows of 200 drawn without replacement from mr, a fresh draw per window;
  2. abrupt shift: 600 mr rows then 600 amazon (or nyt) rows; windows ending at 250, 300, ..., 1200;
     delay = end of the first alarming window ending after 600, minus 600 (null if none alarms);
  3. gradual: a window of 200 where a fraction f is amazon; alarm rate over draws per f.

Each detector is set to a per-window significance of 0.01 where the library exposes one. Evidently's embedding
methods expose only thresholds or a bootstrap percentile; the percentile is set to 0.99 (see NOTES in the output).
Library calls go straight to the drift methods / stat tests that Evidently's Report wraps, because the Report
path costs 30-85 s per window on 384 embedding columns (measured once, see --report-probe).

Usage:  python app/bench_monitor_reference.py --data /work/scratch --out monitor_reference.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from importlib import metadata

import numpy as np

WINDOW, STEP, SHIFT_AT, STREAM_LEN = 200, 50, 600, 1200
FRACTIONS = (0.1, 0.2, 0.3, 0.5)
ALPHA = 0.01


def load(data_dir: str, key: str) -> dict:
    with open(os.path.join(data_dir, f"{key}_rows.json")) as fh:
        rows = json.load(fh)
    probs = np.load(os.path.join(data_dir, f"{key}_probs.npy"))
    emb = np.load(os.path.join(data_dir, f"{key}_emb.npy")).astype(np.float32)
    assert len(rows) == len(probs) == len(emb), key
    return {"text": np.array([r[0] for r in rows], dtype=object), "conf": probs.max(1).astype(np.float64), "emb": emb}


def take(src: dict, idx: np.ndarray) -> dict:
    return {k: v[idx] for k, v in src.items()}


def concat(parts: list[dict]) -> dict:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def build_streams(data: dict, seed: int, fa_windows: int, gradual_draws: int) -> dict:
    rng = np.random.default_rng(seed)
    mr, n_mr = data["mr"], len(data["mr"]["conf"])
    false_alarm = [take(mr, rng.choice(n_mr, WINDOW, replace=False)) for _ in range(fa_windows)]
    pre = take(mr, rng.choice(n_mr, SHIFT_AT, replace=False))  # the same 600 mr rows precede both shifts
    abrupt = {}
    for dom in ("amazon", "nyt"):
        n = len(data[dom]["conf"])
        abrupt[dom] = concat([pre, take(data[dom], rng.choice(n, STREAM_LEN - SHIFT_AT, replace=False))])
    gradual = {}
    n_am = len(data["amazon"]["conf"])
    for f in FRACTIONS:
        k = int(round(f * WINDOW))
        draws = []
        for _ in range(gradual_draws):
            w = concat([take(mr, rng.choice(n_mr, WINDOW - k, replace=False)),
                        take(data["amazon"], rng.choice(n_am, k, replace=False))])
            draws.append(take(w, rng.permutation(WINDOW)))
        gradual[f] = draws
    return {"false_alarm": false_alarm, "abrupt": abrupt, "gradual": gradual}


def window_ends():
    return list(range(WINDOW + STEP, STREAM_LEN + 1, STEP))  # 250, 300, ..., 1200


def slice_window(stream: dict, end: int) -> dict:
    return {k: v[end - WINDOW:end] for k, v in stream.items()}


# ----------------------------------------------------------------------------------------------- detectors
# Each factory takes the reference dict and returns (fn(window) -> (alarm: bool, score: float), info: dict).

def _emb_frame(emb):
    import pandas as pd
    return pd.DataFrame(emb.astype(np.float64), columns=[f"e{i}" for i in range(emb.shape[1])])


def evidently_text(ref):
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType
    import pandas as pd
    r = pd.Series(ref["text"])
    test = get_stattest(r, r, ColumnType.Text, "perc_text_content_drift")

    def fn(w):
        res = test(r, pd.Series(w["text"]), ColumnType.Text, 1 - ALPHA)  # see note below
        return bool(res.drifted), float(res.drift_score)
    return fn, {"library": "evidently", "method": "perc_text_content_drift (TF-IDF + SGD domain classifier ROC AUC vs "
                "the 99th percentile of random-classifier AUC on the held-out half), threshold=0.99. NB Evidently's threshold "
                "here is the percentile (default 0.95), not alpha: threshold=0.01 alarms on every window",
                "score": "domain-classifier ROC AUC"}


def evidently_conf_ks(ref):
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType
    import pandas as pd
    r = pd.Series(ref["conf"])
    test = get_stattest(r, r, ColumnType.Numerical, "ks")

    def fn(w):
        res = test(r, pd.Series(w["conf"]), ColumnType.Numerical, ALPHA)
        return bool(res.drifted), float(res.drift_score)
    return fn, {"library": "evidently", "method": "ValueDrift(confidence, method='ks', threshold=0.01)",
                "score": "KS p-value"}


def evidently_conf_default(ref):
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType
    import pandas as pd
    r = pd.Series(ref["conf"])

    def fn(w):
        c = pd.Series(w["conf"])
        test = get_stattest(r, c, ColumnType.Numerical, None)  # default choice (reference > 1000 rows: Wasserstein)
        res = test(r, c, ColumnType.Numerical, None)
        return bool(res.drifted), float(res.drift_score)
    return fn, {"library": "evidently", "method": "ValueDrift(confidence) default: reference has 1,056 rows (>1000) so "
                "Evidently picks normed Wasserstein distance with threshold 0.1 (a distance, no significance level)",
                "score": "normed Wasserstein distance"}


def _evidently_emb(method_obj, desc):
    def factory(ref):
        ref_df = _emb_frame(ref["emb"])

        def fn(w):
            score, drifted, _ = method_obj(_emb_frame(w["emb"]), ref_df.copy())  # the method mutates its inputs
            return bool(drifted), float(score)
        return fn, {"library": "evidently", "method": desc}
    return factory


def evidently_emb_model(ref):
    from evidently.metrics.embeddings import ModelDriftMethod
    return _evidently_emb(ModelDriftMethod(bootstrap=True, quantile_probability=1 - ALPHA),
                          "EmbeddingsDrift ModelDriftMethod(bootstrap=True, quantile_probability=0.99): SGD logistic "
                          "domain classifier, ROC AUC on the held-out half vs 99th percentile of random AUC")(ref)


def evidently_emb_mmd(ref):
    from evidently.metrics.embeddings import MMDDriftMethod
    return _evidently_emb(MMDDriftMethod(bootstrap=True, quantile_probability=1 - ALPHA),
                          "EmbeddingsDrift MMDDriftMethod(bootstrap=True, quantile_probability=0.99): unbiased MMD^2, "
                          "RBF gamma=1/median(ref-cur dist)^2, vs 99th pct of 100 with-replacement bootstrap MMD^2 "
                          "within the reference (bootstrap kernel uses ref-ref median)")(ref)


def evidently_emb_ratio(ref):
    from evidently.metrics.embeddings import RatioDriftMethod
    return _evidently_emb(RatioDriftMethod(),
                          "EmbeddingsDrift RatioDriftMethod() defaults: share of the 384 components whose normed "
                          "Wasserstein > 0.1, alarm if share > 0.2 (no significance level exposed)")(ref)


def alibi_mmd(ref, n_permutations=100):
    from alibi_detect.cd import MMDDrift
    cd = MMDDrift(ref["emb"], backend="tensorflow", p_val=ALPHA, n_permutations=n_permutations)

    def fn(w):
        out = cd.predict(w["emb"], return_p_val=True, return_distance=True)["data"]
        return bool(out["is_drift"]), float(out["p_val"])
    return fn, {"library": "alibi-detect", "method": f"MMDDrift(backend='tensorflow', p_val=0.01, n_permutations="
                f"{n_permutations}), GaussianRBF kernel with bandwidth inferred from the median heuristic per call",
                "score": "permutation p-value"}


def alibi_classifier(ref):
    from alibi_detect.cd import ClassifierDrift
    from sklearn.linear_model import LogisticRegression
    cd = ClassifierDrift(ref["emb"], model=LogisticRegression(max_iter=1000), backend="sklearn", p_val=ALPHA,
                         preds_type="probs", train_size=0.75, seed=0)

    def fn(w):
        out = cd.predict(w["emb"])["data"]
        return bool(out["is_drift"]), float(out["p_val"])
    return fn, {"library": "alibi-detect", "method": "ClassifierDrift(backend='sklearn', model=LogisticRegression, "
                "train_size=0.75 (library default; n_folds=5 cost 6.5 s/window here), preds_type='probs', p_val=0.01): KS test "
                "on held-out probabilities ref vs current",
                "score": "p-value"}


def alibi_ks_conf(ref):
    from alibi_detect.cd import KSDrift
    cd = KSDrift(ref["conf"][:, None], p_val=ALPHA)

    def fn(w):
        out = cd.predict(w["conf"][:, None])["data"]
        return bool(out["is_drift"]), float(np.min(out["p_val"]))
    return fn, {"library": "alibi-detect", "method": "KSDrift(confidence, p_val=0.01), one feature so no correction",
                "score": "KS p-value"}


DETECTORS = {
    "evidently_text_domain_classifier": evidently_text,
    "evidently_confidence_ks": evidently_conf_ks,
    "evidently_confidence_default": evidently_conf_default,
    "evidently_embeddings_model": evidently_emb_model,
    "evidently_embeddings_mmd": evidently_emb_mmd,
    "evidently_embeddings_ratio": evidently_emb_ratio,
    "alibi_mmd_tf": alibi_mmd,
    "alibi_classifier_sklearn": alibi_classifier,
    "alibi_ks_confidence": alibi_ks_conf,
}


def version(lib: str) -> str:
    try:
        return metadata.version(lib)
    except metadata.PackageNotFoundError:
        return "not installed"


def run_detector(name: str, ref: dict, streams: dict, seed: int) -> dict:
    np.random.seed(seed)
    try:
        import tensorflow as tf
        tf.random.set_seed(seed)
    except Exception:
        pass
    fn, info = DETECTORS[name](ref)
    times = []

    def call(w):
        t0 = time.perf_counter()
        alarm, score = fn(w)
        times.append(time.perf_counter() - t0)
        return alarm, score

    fa = [call(w) for w in streams["false_alarm"]]
    ends = window_ends()
    stream0 = streams["abrupt"]["amazon"]
    pre = {e: call(slice_window(stream0, e)) for e in ends if e <= SHIFT_AT}  # identical mr rows in both streams
    delays, traces = {}, {}
    for dom, stream in streams["abrupt"].items():
        trace, delay = [], None
        for e in ends:
            if e <= SHIFT_AT:
                alarm, score = pre[e]
            else:
                alarm, score = call(slice_window(stream, e))
            trace.append({"end": e, "alarm": alarm, "score": score})
            if e > SHIFT_AT and alarm:
                delay = e - SHIFT_AT
                break  # first alarm after the shift ends the stream
        delays[dom], traces[dom] = delay, trace
    gradual = {}
    for f, draws in streams["gradual"].items():
        res = [call(w) for w in draws]
        gradual[str(f)] = {"alarm_rate": float(np.mean([a for a, _ in res])), "draws": len(res),
                           "mean_score": float(np.mean([s for _, s in res]))}
    lib = info["library"]
    return {
        **info,
        "library_version": version(lib),
        "false_alarm_rate": float(np.mean([a for a, _ in fa])),
        "false_alarm_windows": len(fa),
        "false_alarm_mean_score": float(np.mean([s for _, s in fa])),
        "pre_shift_alarms": int(sum(a for a, _ in pre.values())),
        "pre_shift_windows": len(pre),
        "delay_amazon": delays["amazon"],
        "delay_nyt": delays["nyt"],
        "abrupt_traces": traces,
        "gradual": gradual,
        "seconds_per_window": float(np.median(times)),
        "seconds_per_window_mean": float(np.mean(times)),
        "windows_timed": len(times),
    }


def report_probe(ref: dict, window: dict) -> dict:
    """One window through Evidently's Report API, to record what the wrapper costs over the direct calls."""
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.metrics.embeddings import EmbeddingsDrift, ModelDriftMethod
    cols = [f"e{i}" for i in range(ref["emb"].shape[1])]

    def frame(d):
        f = _emb_frame(d["emb"])
        f["text"], f["confidence"] = list(d["text"]), d["conf"]
        return f
    dd = DataDefinition(text_columns=["text"], numerical_columns=["confidence"] + cols, embeddings={"emb": cols})
    r, c = Dataset.from_pandas(frame(ref), data_definition=dd), Dataset.from_pandas(frame(window), data_definition=dd)
    out = {}
    for key, metric in [("text", ValueDrift(column="text", method="perc_text_content_drift", threshold=1 - ALPHA)),
                        ("confidence_ks", ValueDrift(column="confidence", method="ks", threshold=ALPHA)),
                        ("embeddings_model", EmbeddingsDrift(embeddings_name="emb", drift_method=ModelDriftMethod(
                            bootstrap=True, quantile_probability=1 - ALPHA)))]:
        t0 = time.perf_counter()
        snap = Report([metric]).run(c, r)
        out[key] = {"seconds": time.perf_counter() - t0, "value": snap.dict()["metrics"][0]["value"]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--data", required=True, help="folder with {dev,mr,amazon,nyt}_{probs.npy,emb.npy,rows.json}")
    ap.add_argument("--out", required=True, help="JSON file to write (merged into if it exists)")
    ap.add_argument("--detectors", default=",".join(DETECTORS), help="comma list; choices: " + ", ".join(DETECTORS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fa-windows", type=int, default=60, help="false-alarm windows (default 60)")
    ap.add_argument("--gradual-draws", type=int, default=20, help="draws per gradual fraction (default 20)")
    ap.add_argument("--report-probe", action="store_true", help="also time one window through Evidently's Report")
    args = ap.parse_args(argv)

    data = {k: load(args.data, k) for k in ("dev", "mr", "amazon", "nyt")}
    streams = build_streams(data, args.seed, args.fa_windows, args.gradual_draws)
    out = {}
    if os.path.exists(args.out):
        with open(args.out) as fh:
            out = json.load(fh)
    out.setdefault("setup", {}).update({
        "window": WINDOW, "step": STEP, "shift_at": SHIFT_AT, "stream_len": STREAM_LEN, "alpha": ALPHA,
        "seed": args.seed, "reference": f"all {len(data['dev']['conf'])} dev rows",
        "sizes": {k: int(len(v["conf"])) for k, v in data.items()}, "python": sys.version.split()[0],
        "versions": {p: version(p) for p in ("evidently", "alibi-detect", "tensorflow", "scikit-learn", "numpy",
                                               "pandas")},
        "delay": "end of first alarming window ending after 600, minus 600; null if none alarms by 1200",
    })
    out.setdefault("detectors", {})
    for name in [d for d in args.detectors.split(",") if d]:
        t0 = time.perf_counter()
        try:
            out["detectors"][name] = run_detector(name, data["dev"], streams, args.seed)
        except Exception as exc:  # record and go on with the next detector
            out["detectors"][name] = {"error": f"{type(exc).__name__}: {exc}"}
        r = out["detectors"][name]
        print(f"{name}: fa={r.get('false_alarm_rate')} d_am={r.get('delay_amazon')} d_nyt={r.get('delay_nyt')} "
              f"grad={ {f: g['alarm_rate'] for f, g in r.get('gradual', {}).items()} } "
              f"s/win={r.get('seconds_per_window')} ({time.perf_counter() - t0:.0f}s) {r.get('error', '')}", flush=True)
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)
    if args.report_probe:
        out["evidently_report_probe"] = report_probe(data["dev"], streams["false_alarm"][0])
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
