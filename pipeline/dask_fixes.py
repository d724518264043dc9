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

It also computes each side input inside each task that reads it (iterating its bag there),
which runs every step before the side input again, outside the graph: a stage that writes files
ran twice at once (in the graph, and for the side input) and once more per consuming partition
group. And it hands a DoFn its side inputs' raw arguments, so a positional or keyword side input
(``CombineGlobally``'s default, ``AsList(...)``) reached the DoFn as the view object, not its
value.

:class:`ParDo` is the same translation with the receiver made inside the task, one per
partition, and read after ``finish_bundle``; each side input's bag is a dependency of the
consuming tasks in the one graph (its own partition keys: computed once, handed to each task
whole), and the DoFn gets Beam's placeholders, which the invoker fills with the values.
:func:`install` puts it in the DaskRunner's table of translations; clipbeam calls it whenever
the DaskRunner is asked for (:func:`clipbeam.pipeline.beam_options.resolve_beam_args`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ParDo", "install"]


def _bundle(
    items: Any,
    signature: Any,
    window_fn: Any,
    invoker_kwargs: dict,
    views: list[tuple[Any, dict, Any]],
    *side_values: list,
) -> list:
    """Runs one partition through a DoFn: its outputs, ``finish_bundle``'s included.

    ``views`` holds each side input's view class, view options and window function, and
    ``side_values`` the elements of each side input, computed by the graph."""
    from apache_beam.runners.common import DoFnInvoker, _OutputHandler
    from apache_beam.runners.dask.transform_evaluator import OneReceiver, get_windowed_value
    from apache_beam.transforms.sideinputs import SideInputMap

    side_inputs = [
        SideInputMap(view, options, [get_windowed_value(v, side_window_fn) for v in values])
        for (view, options, side_window_fn), values in zip(views, side_values, strict=True)
    ]
    invoker_kwargs = {**invoker_kwargs, "side_inputs": side_inputs or None}
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


def _concatenated(*partitions: list) -> list:
    return [value for partition in partitions for value in partition]


def _translation() -> type:
    import apache_beam
    import dask
    from apache_beam import DoFn
    from apache_beam.runners.common import DoFnContext, DoFnSignature
    from apache_beam.runners.dask import transform_evaluator

    class ParDo(transform_evaluator.ParDo):
        """Beam's DaskRunner ParDo, with a receiver per partition (module docstring)."""

        def apply(self, input_bag: Any, side_inputs: Any = None) -> Any:
            transform = self.transform
            assert isinstance(transform, apache_beam.ParDo)
            # Side inputs as Beam's placeholders, which the invoker fills in (the raw
            # arguments reached the DoFn as view objects, AsList(...) in place of a list).
            args, kwargs = transform.args, transform.kwargs
            main_input = next(iter(self.applied.main_inputs.values()))
            window_fn = getattr(getattr(main_input, "windowing", None), "windowfn", None)
            # Beam's visitor wraps each side input's bag in a map that iterates it in the
            # task; the bag goes into the graph instead (module docstring).
            views, side_bags = [], []
            for side in side_inputs or ():
                iterator = side._iterable  # a DaskBagWindowedIterator
                views.append((side._view_class, side._view_options, iterator.window_fn))
                # The bag's own partition keys (a bag handed to delayed is copied under new
                # keys, which computes it twice).
                parts = iterator.bag.to_delayed(optimize_graph=False)
                side_bags.append(dask.delayed(_concatenated, pure=True)(*parts))
            invoker_kwargs = {
                "context": DoFnContext(transform.label, state=None),
                "input_args": list(args),
                "input_kwargs": kwargs,
                "user_state_context": None,
                "bundle_finalizer_param": DoFn.BundleFinalizerParam(),
            }
            windowed = input_bag.map(transform_evaluator.get_windowed_value, window_fn)
            return windowed.map_partitions(
                _bundle, DoFnSignature(transform.fn), window_fn, invoker_kwargs, views, *side_bags
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
