"""``python -m clipbeam.pipeline``: the same as the ``clipbeam`` console script."""

from clipbeam.pipeline.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
