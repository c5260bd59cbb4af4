"""medtune: fine-tune and evaluate medical language models across languages.

Entry points: `python -m medtune.train`, `python -m medtune.data prepare`, `python -m medtune.evaluate`,
`python -m medtune.report DIR`, `python -m medtune.bench`, `python -m medtune.memory`,
`python -m medtune.export RUN_DIR`.
"""

__version__ = "0.1.0"
