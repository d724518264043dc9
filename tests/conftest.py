"""Test-wide settings: nothing in the tests may reach the network."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

# Shared fixtures: tiny random checkpoints of both families, the GCS emulator on loopback, and
# the tokenizer tests' references (corpus, hub layouts, transformers' tokenizers).
pytest_plugins = ["tests.checkpoints", "tests.gcs", "tests.model.tokenizer_references"]
