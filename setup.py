"""dptext: word-level differential privacy for text corpora, as an Apache Beam pipeline."""

import re

from setuptools import setup

VERSION = re.search(r"__version__ = \"(.+?)\"", open("pipeline/__init__.py").read()).group(1)

setup(
    name="dptext",
    version=VERSION,
    description="Privatize text corpora with word-level differential privacy on Apache Beam",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # One import package, `dptext`: the repository's top-level folders install under it, so a
    # user's own `pipeline` or `transforms` package can never shadow a pickled DoFn's module.
    packages=[
        "dptext",
        "dptext.pipeline",
        "dptext.pipeline.engines",
        "dptext.transforms",
        "dptext.transforms.mechanisms",
    ],
    package_dir={"dptext": "pipeline/api", "dptext.pipeline": "pipeline", "dptext.transforms": "transforms"},
    # `make engines`: the poms and the sha256 locks of the Flink and Spark job servers.
    package_data={"dptext.pipeline.engines": ["flink/*", "spark/*"]},
    install_requires=[
        "apache-beam==2.62.0",  # the newest Beam whose Flink and Spark runners Maven Central serves (README)
        "annoy==1.17.3",
        "numpy>=1.26",
        "scipy>=1.11",
        "dp-accounting==0.6.0",
        "tqdm>=4.60",
        "matplotlib>=3.8",  # dptext stats: plots of N_w and S_w against epsilon
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "hypothesis>=6.100",
            "python-hcl2==8.1.4",
            "gcp-storage-emulator==2026.7.19",
            "scikit-learn>=1.3",  # so CI runs the utility benchmark's tests too
            "ruff==0.17.6",
        ],  # make test checks lint and format first
        "gcp": ["apache-beam[gcp]==2.62.0"],  # gs:// paths and the DataflowRunner
        "bench": ["scikit-learn>=1.3"],  # benchmarks.utility: the classifiers trained on privatized text
    },
    entry_points={"console_scripts": ["dptext = dptext.pipeline.cli:main"]},
)
