"""Fixtures of the transforms tests: tiny checkpoints of both families, GCS emulator."""

from tests.checkpoints import checkpoint, chinese_clip_checkpoint, clip_checkpoint
from tests.gcs import gcs_dir, gcs_emulator

__all__ = ["checkpoint", "chinese_clip_checkpoint", "clip_checkpoint", "gcs_dir", "gcs_emulator"]
