"""`moat recommend train|export`: the sequential recommender (models/recommend)."""
from __future__ import annotations

import json
import sys

from moatkit.app.cli.common import add_verb


def recommend(args, config) -> None:
    if args.action == "export":
        from moatkit.models.recommend.export import export_recommender

        print(json.dumps(export_recommender(f"{config.run_dir}/model", repo=config.repo,
                                            model_name=config.model_name, top_k=config.top_k)))
        return
    from moatkit.models.recommend.train import train_recommender

    report = train_recommender(config, verbose=1 if sys.stdout.isatty() else 2)
    rows = [f"{name:<13} HR@10 {r['hr@10']:.4f}  NDCG@10 {r['ndcg@10']:.4f}  HR@20 {r['hr@20']:.4f}  "
            f"NDCG@20 {r['ndcg@20']:.4f}" for name, r in report["test"].items()]
    print("\n".join([f"test: {report['split']['users']} users, full ranking over {report['split']['items']} items",
                     *rows]))
    if "export" in report:
        print(f"exported {report['export']['path']}; serve with: moat serve --model_name={config.model_name} "
              f"--model_base_path={config.repo}/{config.model_name} --rest_api_port=8501")
    print(f"report: {config.run_dir}/report.json; TensorBoard: tensorboard --logdir {config.run_dir}")


def add_parsers(verbs) -> None:
    parser = add_verb(
        verbs, "recommend", recommend, config="moatkit.models.recommend.config:RecommendConfig",
        help="train, evaluate and export a Transformer next-item recommender (SASRec / BERT4Rec style)",
        description="train: leave-one-out splits of the interaction log (--set data=catalog:movielens-100k, a "
                    "dataset dir, or a CSV with user,item,timestamp columns), the model selected on validation "
                    "NDCG@10, the test targets ranked over the full catalogue beside tuned most-popular, item-kNN "
                    "and ALS baselines → run_dir/report.json, TensorBoard logs, model/; then exported to "
                    "repo/model_name/VERSION (serving_default: history of item ids → top_k item ids, titles, "
                    "scores). Rerun to resume after a kill. export: export an already trained run_dir again.")
    parser.add_argument("action", choices=("train", "export"), help="what to do")
