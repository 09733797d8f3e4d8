from setuptools import find_packages, setup

setup(
    name="moatkit",
    version="0.1.0",
    description="TensorFlow/Keras language-model life cycle: data, pretraining, fine-tuning, compression, serving",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["app", "app.*", "data", "data.*", "models", "models.*", "serving", "serving.*"]),
    package_data={"app": ["configs/*.yaml"]},
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "tf-keras>=2.21,<2.22",
        "tensorflow-text>=2.21,<2.22",
        "tensorflow-model-optimization==0.8.1",
        "tensorflow-serving-api>=2.21,<2.22",
        "transformers>=4.57,<5",
        "tokenizers>=0.21,<0.23",
        "safetensors>=0.4",
        "tensorboard>=2.21,<2.22",
        "grpcio>=1.60",
        "grpcio-health-checking>=1.60",
        "pyyaml>=6",
        "tqdm>=4.60",
        "numpy>=1.26",
        "scipy>=1.11",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-timeout>=2.3", "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29"],
    },
    entry_points={"console_scripts": ["moat=app.cli:main", "moat-model-server=serving.server:main"]},
)
