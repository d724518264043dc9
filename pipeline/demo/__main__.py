"""``python -m clipbeam.pipeline.demo``: the same as ``clipbeam demo``."""

from clipbeam.pipeline.demo.command import main

if __name__ == "__main__":
    raise SystemExit(main())
