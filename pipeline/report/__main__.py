"""``python -m clipbeam.pipeline.report DIR``: the same as ``clipbeam report DIR``."""

from clipbeam.pipeline.report.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
