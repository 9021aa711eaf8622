"""fairseq-seqkd: Sequence-Level Knowledge Distillation (Kim & Rush, 2016) as a fairseq plugin."""

from setuptools import find_packages, setup

setup(
    name="fairseq-seqkd",
    version="0.1.0",
    description="Sequence-level knowledge distillation for NMT as a fairseq --user-dir plugin",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["fairseq_seqkd", "fairseq_seqkd.*"]),
    python_requires=">=3.11",
    # fairseq is deliberately not listed: bring any build (upstream main, fairseq-fixed, ...).
    install_requires=["torch", "numpy", "sacrebleu>=2", "sentencepiece", "tqdm"],
    extras_require={"ct2": ["ctranslate2"], "plots": ["matplotlib"]},
    entry_points={"console_scripts": ["fairseq-seqkd = fairseq_seqkd.cli:main"]},
)
