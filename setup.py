from setuptools import find_packages, setup

# The top-level folders install as one namespace, `moatkit.app`, `moatkit.data`, …, so nothing named `data` or
# `models` lands in site-packages (`moatkit` itself is a namespace package: it has no folder of its own).
LAYERS = ("app", "data", "models", "serving")
PACKAGES = [f"moatkit.{p}" for p in find_packages(include=[f"{layer}{tail}" for layer in LAYERS for tail in ("", ".*")])]

setup(
    name="moatkit",
    version="0.1.0",
    description="TensorFlow/Keras language-model life cycle: data, pretraining, fine-tuning, compression, serving",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir={f"moatkit.{layer}": layer for layer in LAYERS},
    package_data={"moatkit.app": ["configs/*.yaml", "support/static/*", "opinion/static/*"]},  # the web pages
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "tf-keras>=2.21,<2.22",
        "tensorflow-text>=2.21,<2.22",
        "tensorflow-model-optimization==0.8.1",
        "ai-edge-litert>=2.1,<3",  # LiteRT interpreter for compressed .tflite variants (models/compress/ptq.py)
        "matplotlib>=3.8",  # the compression report's accuracy-vs-latency plot (models/compress/report.py)
        "tensorflow-serving-api>=2.21,<2.22",
        "transformers>=4.57,<5",
        "tokenizers>=0.21,<0.23",
        "blingfire>=0.1.8,<0.2",  # sentence splitting for pretraining examples (data/pretraining.py)
        "safetensors>=0.4",
        "tensorboard>=2.21,<2.22",
        "grpcio>=1.60",
        "grpcio-health-checking>=1.60",
        "prometheus-client>=0.20",  # `moat monitor follow` gauges (serving/monitoring/follow.py)
        "bm25s>=0.2",  # the lexical half of the support assistant's hybrid answer index (app/support/index.py)
        # its search from 100k keys; wheels for Linux x86-64 only (elsewhere an index that big says what is missing)
        "scann==1.4.2; platform_system == 'Linux' and platform_machine == 'x86_64'",
        "py3langid>=0.3,<1",  # language share of logged texts (serving/monitoring/text_stats.py)
        "google-crc32c>=1.5",  # TFRecord checksums of the request logs, read at byte offsets (serving/monitoring/logs.py)
        "pyyaml>=6",
        "tqdm>=4.60",
        "numpy>=1.26",
        "scipy>=1.11",
        "datasketch>=2.0,<3",  # MinHash LSH near-dup (data/dedup.py); 2.x hash scheme, so clusters are stable
        "sacrebleu>=2.4,<3",  # corpus BLEU for the translation Transformer (models/seq2seq/train.py)
        "scikit-learn>=1.4",  # data.labeling baseline (hashed bag-of-words logistic regression, k-means)
        "cleanlab>=2.7,<3",  # data.labeling.quality: confident-learning label-issue filter (no torch needed)
        "implicit>=0.7.2,<0.8",  # ALS matrix factorisation, the recommender's MF baseline (models/recommend/baselines.py)
        "threadpoolctl>=3.1",  # one BLAS thread inside implicit's own threads (models/recommend/baselines.py)
        "krippendorff>=0.8",  # data.labeling.quality: Krippendorff's alpha over per-rater scores
        # data/clean.py + data/readers.py: mojibake repair, language id (ships its model), parquet, html text
        "ftfy>=6.2,<7", "langid>=1.1.6,<2", "pyarrow>=14", "beautifulsoup4>=4.12",
    ],
    extras_require={
        # Beam caps protobuf < 7 and TensorFlow here needs 7: install into its own venv (`make beam-venv`).
        "beam": ["apache-beam>=2.77,<3", "datasketch>=2.0,<3", "pyyaml>=6", "ftfy>=6.2,<7", "langid>=1.1.6,<2",
                 "beautifulsoup4>=4.12", "pyarrow>=14", "numpy>=1.26",
                 "tensorboard>=2.21,<2.22",  # the data card's TensorBoard text summary (no TensorFlow needed)
                 # app/opinion/beam_score.py: RunInference with Beam's TensorFlow model handler (it imports
                 # tensorflow_hub); TensorFlow 2.21 takes Beam's protobuf 6 (the data pipeline never imports it)
                 "tensorflow>=2.21,<2.22", "tensorflow-text>=2.21,<2.22", "tensorflow-hub>=0.16,<1"],
        "hf": ["datasets>=2.19"],  # `moat data prepare --source hf:NAME` (needs the Hugging Face hub)
        "test": ["pytest>=8", "portpicker>=1.6", "pytest-timeout>=2.3", "hypothesis>=6.100", "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29",
                 "selenium>=4.20"],  # drives headless Chromium in tests/integration/test_support_browser.py
    },
    entry_points={"console_scripts": ["moat=moatkit.app.cli:main", "moat-model-server=moatkit.serving.server:main"]},
)
