"""Fixtures of the pipeline tests: tiny checkpoints of both families and the GCS emulator."""

from tests.checkpoints import chinese_clip_checkpoint, clip_checkpoint
from tests.gcs import gcs_dir, gcs_emulator

__all__ = ["chinese_clip_checkpoint", "clip_checkpoint", "gcs_dir", "gcs_emulator"]
