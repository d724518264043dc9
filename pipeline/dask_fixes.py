"""A narrow override of Beam's DaskRunner (Beam 2.77): how it runs a ParDo over one partition.

``apache_beam.runners.dask.transform_evaluator.ParDo`` builds one output receiver when it
translates the ParDo, on the launcher, and every partition's task appends to that same list; the
task returns the list *before* ``finish_bundle`` runs. So

* what a DoFn emits from ``finish_bundle`` is lost (``beam.combiners.Top``'s per-bundle heaps
  come out empty), and
* where several partitions run on one copy of the task's arguments (the threaded scheduler a
  side input is computed with, inside a worker's task), each partition returns the outputs of
  every partition before it as well (a 300-row Map gave 546 elements; a ``CombineGlobally``
  then gave one result per partition group, and a side input computed from the job's own units
  disagreed with the main graph).

:class:`ParDo` is the same translation with the receiver made inside the task, one per
partition, and read after ``finish_bundle``. :func:`install` puts it in the DaskRunner's table of
translations; clipbeam calls it whenever the DaskRunner is asked for
(:func:`clipbeam.pipeline.beam_options.resolve_beam_args`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ParDo", "install"]


def _bundle(items: Any, signature: Any, window_fn: Any, invoker_kwargs: dict) -> list:
    """Runs one partition through a DoFn: its outputs, ``finish_bundle``'s included."""
    from apache_beam.runners.common import DoFnInvoker, _OutputHandler
    from apache_beam.runners.dask.transform_evaluator import OneReceiver

    receivers = OneReceiver()  # this partition's own
    handler = _OutputHandler(
        window_fn=window_fn,
        main_receivers=receivers[None],
        tagged_receivers=receivers,
        per_element_output_counter=None,
        output_batch_converter=None,
        process_yields_batches=False,
        process_batch_yields_elements=False,
    )
    invoker = DoFnInvoker.create_invoker(signature, handler, **invoker_kwargs)
    invoker.invoke_setup()
    invoker.invoke_start_bundle()
    for item in items:
        invoker.invoke_process(item)
    invoker.invoke_finish_bundle()
    invoker.invoke_teardown()
    return [value.value for value in receivers.values]


def _translation() -> type:
    import apache_beam
    from apache_beam import DoFn
    from apache_beam.runners.common import DoFnContext, DoFnSignature
    from apache_beam.runners.dask import transform_evaluator

    class ParDo(transform_evaluator.ParDo):
        """Beam's DaskRunner ParDo, with a receiver per partition (module docstring)."""

        def apply(self, input_bag: Any, side_inputs: Any = None) -> Any:
            transform = self.transform
            assert isinstance(transform, apache_beam.ParDo)
            args, kwargs = transform.raw_side_inputs
            main_input = next(iter(self.applied.main_inputs.values()))
            window_fn = getattr(getattr(main_input, "windowing", None), "windowfn", None)
            invoker_kwargs = {
                "context": DoFnContext(transform.label, state=None),
                "side_inputs": side_inputs,
                "input_args": list(args),
                "input_kwargs": kwargs,
                "user_state_context": None,
                "bundle_finalizer_param": DoFn.BundleFinalizerParam(),
            }
            windowed = input_bag.map(transform_evaluator.get_windowed_value, window_fn)
            return windowed.map_partitions(
                _bundle, DoFnSignature(transform.fn), window_fn, invoker_kwargs
            )

    return ParDo


ParDo: Any = None


def install() -> None:
    """Makes the DaskRunner translate ParDo with :class:`ParDo` (idempotent)."""
    global ParDo
    import apache_beam
    from apache_beam.runners.dask import transform_evaluator

    if ParDo is None:
        ParDo = _translation()
    transform_evaluator.TRANSLATIONS[apache_beam.ParDo] = ParDo
