"""Deduplication: exact (sha256 of image bytes) and semantic (SemDeDup on k-means clusters).

Modules: :mod:`~clipbeam.transforms.dedup.spec` (the job and its counts),
:mod:`~clipbeam.transforms.dedup.read` (a unit's rows and its part of the fit sample),
:mod:`~clipbeam.transforms.dedup.sample` (the fit sample: priorities, candidates, their combine),
:mod:`~clipbeam.transforms.dedup.embed` (raw images embedded while reading, ``--model``),
:mod:`~clipbeam.transforms.dedup.kmeans` (fit, assignment, second-level splits),
:mod:`~clipbeam.transforms.dedup.semdedup` (ranking and blocked similarities in one cluster),
:mod:`~clipbeam.transforms.dedup.tiles` (a group over the bound, tile by tile),
:mod:`~clipbeam.transforms.dedup.file_shuffle` (``--shuffle files``: grouping through files) and
:mod:`~clipbeam.transforms.dedup.stages` (the Beam steps). The job itself:
:mod:`clipbeam.pipeline.dedup`.
"""
