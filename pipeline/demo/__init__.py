"""The offline demo: generated scenes, the recipes of the bundled demo models, ``clipbeam demo``.

:mod:`~clipbeam.pipeline.demo.scenes` generates image-caption pairs whose right answers are known,
:mod:`~clipbeam.pipeline.demo.vocabularies` and :mod:`~clipbeam.pipeline.demo.recipes` rebuild the
bundled demo models from a seed (``clipbeam train --recipe NAME``), and
:mod:`~clipbeam.pipeline.demo.command` is ``clipbeam demo`` (also ``python -m
clipbeam.pipeline.demo``). Importing this package loads nothing else.
"""
