"""``clipbeam report``: the page of every job kind, read back against the job's own output, and
rendered in headless Chromium (Debian's ``chromium`` package) with no console error, no network
request and the summary's counts on screen.

The browser is driven over the DevTools protocol with aiohttp's websocket client (aiohttp comes
with gcsfs, a clipbeam dependency). Four small jobs run once for the module: filter (id column,
binary images, planted faults, a caption and an id that try to inject HTML), score (default
``<file>:<row>`` ids, images stored as file paths), classify and an image-only embed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import shutil
import subprocess
import time
from base64 import b64decode
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipbeam.pipeline.report import ReportData, collect, main, render, write_report
from clipbeam.pipeline.summary import counter_names
from tests.datasets import Dataset, build_dataset
from tests.pipeline.jobtools import JobRun, expected_id, run_job

INJECTION = (
    """</span><script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'&"""
)
INJECTED_ID = "<b>id</b>"
SHORT = "dog"  # fails --min-text-chars 4
FAULTS = {"corrupt_image": 1, "null_text": 1}

# -- the jobs ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Job:
    run: JobRun
    data: Dataset


def _inject(data: Dataset) -> Dataset:
    """Gives the first good row of the first file a caption and an id made of HTML, and the
    second one a caption short enough for ``--min-text-chars``."""
    first, second = [r for r in data.rows if r.fault is None and r.file_index == 0][:2]
    table = pq.read_table(first.file)
    texts, ids = table.column("text").to_pylist(), table.column("id").to_pylist()
    texts[first.row], ids[first.row], texts[second.row] = INJECTION, INJECTED_ID, SHORT
    table = table.set_column(table.schema.get_field_index("text"), "text", [texts])
    table = table.set_column(table.schema.get_field_index("id"), "id", [ids])
    pq.write_table(table, first.file, row_group_size=data.row_group_size)
    changed = {
        first.row: dataclasses.replace(first, text=INJECTION, id=INJECTED_ID),
        second.row: dataclasses.replace(second, text=SHORT),
    }
    rows = [changed.get(r.row, r) if r.file_index == 0 else r for r in data.rows]
    return dataclasses.replace(data, rows=rows)


@pytest.fixture(scope="module")
def jobs(clip_checkpoint, tmp_path_factory) -> dict[str, Job]:
    root = tmp_path_factory.mktemp("report")
    small = {"num_files": 2, "rows_per_file": 6, "row_group_size": 4}
    pairs = _inject(build_dataset(root / "pairs", plant=FAULTS, seed=5, **small))
    paths = build_dataset(
        root / "paths", image_format="path", id_column=None, plant={"missing_image": 1}, seed=6,
        **small,
    )  # fmt: skip
    runs = {
        "filter": (pairs, ["--id-column", "id", "--min-score", "0", "--min-text-chars", "4"]),
        "score": (paths, []),
        "classify": (pairs, ["--id-column", "id", "--labels", "cat,rocket,coffee", "--top-k", "2"]),
        "embed": (pairs, ["--id-column", "id", "--text-column", "none"]),
    }
    return {
        kind: Job(run_job(kind, data.pattern, str(root / kind), clip_checkpoint, *args), data)
        for kind, (data, args) in runs.items()
    }


# -- what the page holds, against the job's own output ----------------------------------------


def _row(job: Job, row_id: Any):
    return next(r for r in job.data.rows if expected_id(job.data, r) == row_id)


def _pixels(uri: str) -> Image.Image:
    assert uri.startswith("data:image/jpeg;base64,")
    image = Image.open(io.BytesIO(b64decode(uri.split(",", 1)[1])))
    image.load()
    return image


def _check_example(job: Job, example, side: int) -> None:
    """An example carries its own row's caption and a thumbnail of its own row's image."""
    row = _row(job, example.id)
    assert example.note is None
    reads_text = json.loads(Path(job.run.output, "_job.json").read_text())["text_column"]
    assert example.caption == (row.text if reads_text else None)
    thumb = _pixels(example.thumbnail)
    width, height = row.size
    assert max(thumb.size) == min(side, max(width, height))
    assert abs(thumb.width / thumb.height - width / height) < 0.2 + 2 / min(thumb.size)
    # The thumbnail looks like its row's image, more than like any other row's (JPEG is lossy).
    pixels = np.asarray(thumb.convert("RGB"), dtype=np.float32)
    distance = {
        expected_id(job.data, other): np.abs(pixels - _flat(other.image, thumb.size)).mean()
        for other in job.data.rows
        if other.image_bytes is not None
    }
    assert distance[example.id] < 10
    assert distance[example.id] == min(distance.values())


def _flat(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """``image`` on white, resized to ``size``, as float RGB pixels."""
    source = image.convert("RGBA")
    flat = Image.new("RGB", source.size, (255, 255, 255))
    flat.paste(source, mask=source.getchannel("A"))
    return np.asarray(flat.resize(size, Image.Resampling.LANCZOS), dtype=np.float32)


def test_score_report_ranks_all_rows_and_joins_default_ids_to_image_paths(jobs):
    job = jobs["score"]
    report = collect(job.run.output, examples=3, thumbnail_side=24)
    table = job.run.table("scores")
    ranked = sorted(zip(table["clip_score"].to_pylist(), table["id"].to_pylist(), strict=True))
    assert [e.id for e in report.best] == [i for _, i in ranked[::-1][:3]]
    assert [e.id for e in report.worst] == [i for _, i in ranked[:3]]
    assert [e.score for e in report.best] == pytest.approx([s for s, _ in ranked[::-1][:3]])
    for example in [*report.best, *report.worst]:
        _check_example(job, example, 24)

    assert report.notes == []
    assert report.scores.count == table.num_rows
    assert report.scores.low == pytest.approx(ranked[0][0])
    assert report.scores.mean == pytest.approx(np.mean([s for s, _ in ranked]), abs=1e-6)
    assert report.error_counts == Counter({"missing_image": 1})
    assert report.file_rows == {"scores": table.num_rows, "errors": 1}


def test_small_output_shows_each_row_once(jobs):
    job = jobs["score"]
    report = collect(job.run.output, examples=100)
    shown = [e.id for e in [*report.best, *report.worst]]
    assert sorted(shown) == sorted(job.run.table("scores")["id"].to_pylist())


def test_filter_report_counts_rules_and_spreads_rejected_examples(jobs):
    job = jobs["filter"]
    report = collect(job.run.output, examples=4)
    rejected = job.run.table("rejected")
    rules = Counter(rule for reason in rejected["reject_reason"].to_pylist() for rule in reason)
    assert report.reject_rules == rules
    assert set(rules) == {"min_score", "min_text_chars"}
    assert len(report.rejected) == min(4, rejected.num_rows)
    reasons = {r["id"]: r["reject_reason"] for r in rejected.to_pylist()}
    for example in report.rejected:
        assert example.values["reject_reason"] == reasons[example.id]
        _check_example(job, example, 160)
    # Rules are taken in turn, so the rarer rule has an example too.
    picked = {rule for e in report.rejected for rule in e.values["reject_reason"]}
    assert picked == set(rules)
    shown = [e.score for e in report.rejected]
    assert shown == sorted(shown, reverse=True)  # highest first: the rows nearest the cut

    assert report.error_counts == Counter(FAULTS)
    errors = job.run.table("errors").to_pylist()
    assert {k: [r["id"] for r in v] for k, v in report.error_examples.items()} == {
        row["error_type"]: [row["id"]] for row in errors
    }
    folders = {"kept": "kept", "rejected": "rejected", "errors": "error_rows"}
    assert report.file_rows == {k: job.run.summary[v] for k, v in folders.items()}
    assert sum(report.scores.fine.values()).sum() == job.run.summary["output_rows"]
    assert report.notes == []


def test_filter_report_shows_the_rows_either_side_of_the_score_cut(jobs):
    job = jobs["filter"]
    report = collect(job.run.output, examples=3)
    kept = sorted(job.run.table("kept")["clip_score"].to_pylist())
    by_score = [
        r["clip_score"]
        for r in job.run.table("rejected").to_pylist()
        if "min_score" in r["reject_reason"]
    ]
    assert [e.score for e in report.above_cut] == pytest.approx(kept[:3])
    assert [e.score for e in report.below_cut] == pytest.approx(sorted(by_score)[::-1][:3])
    cut = job.run.summary["options"]["min_score"]
    assert all(e.score >= cut for e in report.above_cut)
    assert all(e.score < cut for e in report.below_cut)
    html = render(report)
    assert "Just above the cut" in html and "Just below the cut" in html

    # A job without a score cut has no such sections.
    assert collect(jobs["score"].run.output).below_cut == []


def test_classify_report_counts_top_labels_and_ranks_by_confidence(jobs):
    job = jobs["classify"]
    report = collect(job.run.output, examples=2)
    table = job.run.table("labels")
    assert report.score_name == "top-1 probability"
    assert report.label_counts == Counter(labels[0] for labels in table["labels"].to_pylist())
    top = sorted(p[0] for p in table["probabilities"].to_pylist())
    assert [e.score for e in report.best] == pytest.approx(top[::-1][:2])
    assert [e.score for e in report.worst] == pytest.approx(top[:2])
    for example in report.best:
        _check_example(job, example, 160)
    page = render(report)
    assert 'id="labels"' in page and 'id="no-scores"' in page and "Most confident" in page


def test_embed_report_without_scores_says_so_and_shows_first_rows(jobs):
    job = jobs["embed"]
    report = collect(job.run.output, examples=3)
    assert report.score_name is None and report.best == [] and report.scores.count == 0
    assert [e.id for e in report.samples] == job.run.table("embeddings")["id"].to_pylist()[:3]
    for example in report.samples:
        assert example.score is None and example.caption is None
        _check_example(job, example, 160)
    page = render(report)
    assert "computed no clip_score: it embedded only images" in page
    assert "clip_score distribution" not in page


class _Elements(HTMLParser):
    """Tags, attribute names and text of a page, as a browser's tokenizer sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += [name for name, _ in attrs]
        self.text += [value for name, value in attrs if name == "title" and value]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_captions_and_ids_are_escaped(jobs):
    page = render(collect(jobs["filter"].run.output, examples=100))
    elements = _Elements()
    elements.feed(page)
    assert "script" not in elements.tags
    assert not [name for name in elements.attributes if name.startswith("on")]
    assert [t for t in elements.tags if t == "b"] == []  # the id's <b> stays text
    assert INJECTION in elements.text  # shown whole, as text
    assert INJECTED_ID in elements.text


def test_report_notes_changed_inputs_and_outputs(jobs, tmp_path):
    copy = tmp_path / "filter"
    shutil.copytree(jobs["filter"].run.output, copy)
    record = json.loads((copy / "_job.json").read_text())
    record["inputs"] = [str(tmp_path / "gone" / "*.parquet")]
    (copy / "_job.json").write_text(json.dumps(record))
    removed = sorted((copy / "rejected").glob("part-*.parquet"))[0]
    lost = pq.read_metadata(removed).num_rows
    removed.unlink()

    report = collect(str(copy), examples=2)
    summary = jobs["filter"].run.summary
    assert report.notes[0] == (
        f"rejected/ holds {summary['rejected'] - lost:,} rows but summary.json counts "
        f"{summary['rejected']:,}: the folder was changed after the job ran, or holds files of "
        "another run"
    )
    assert "do not add up to summary.json's histogram" in report.notes[1]
    assert "the job's inputs cannot be read any more" in report.notes[2]
    assert all(e.thumbnail is None and e.note for e in report.examples())
    assert 'id="notes"' in render(report)


def test_report_of_an_output_folder_in_a_bucket(jobs, gcs_dir):
    from clipbeam.transforms import storage

    local = Path(jobs["score"].run.output)
    for path in local.rglob("*"):
        if path.is_file():
            storage.write_atomic(f"{gcs_dir}/{path.relative_to(local)}", path.read_bytes())

    written = write_report(gcs_dir, examples=2)
    assert written == f"{gcs_dir}/report.html"
    page = storage.read_bytes(written).decode("utf-8")
    summary = jobs["score"].run.summary
    assert f'data-count="input_rows">{summary["input_rows"]:,}<' in page
    assert page.count('<img src="data:image/jpeg;base64,') == 4  # 2 highest + 2 lowest


def test_cli_writes_the_page_and_refuses_a_folder_without_summary(jobs, tmp_path, capsys):
    from clipbeam.pipeline.cli import main as clipbeam

    out = tmp_path / "page.html"
    assert clipbeam(["report", jobs["score"].run.output, "--out", str(out), "--examples", "1"]) == 0
    assert capsys.readouterr().out.strip() == f"clipbeam report: {out}"
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")

    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"clipbeam report: error: {tmp_path} holds no summary.json")
    assert "--output folder of a finished clipbeam job" in err


def test_log_scale_histogram_shows_a_small_rejected_share(jobs, tmp_path, capsys):
    from clipbeam.pipeline.report.data import FINE_BINS
    from clipbeam.pipeline.report.histogram import histogram

    kept, rejected = np.zeros(FINE_BINS, int), np.zeros(FINE_BINS, int)
    kept[FINE_BINS // 2], rejected[FINE_BINS // 2 - 1] = 5000, 3
    series = [("kept", kept, "#00f"), ("rejected", rejected, "#f00")]

    def heights(plot) -> dict[str, float]:
        return {p.fill: p.height for bar in plot.bars for p in bar.parts}

    linear, log = heights(histogram(series, [])), heights(histogram(series, [], log=True))
    assert linear["#f00"] / linear["#00f"] < 0.001  # 3 of 5,000: under a pixel
    assert log["#f00"] / log["#00f"] > 0.1
    assert [t.value for t in histogram(series, [], log=True).y_ticks] == [
        0,
        1,
        10,
        100,
        1000,
        10000,
    ]

    out = tmp_path / "page.html"
    assert main([jobs["filter"].run.output, "--out", str(out), "--log-scale"]) == 0
    assert "rows per bin on a log scale" in out.read_text(encoding="utf-8")
    assert main([jobs["filter"].run.output, "--out", str(out)]) == 0
    assert "log scale" not in out.read_text(encoding="utf-8")


# -- in a browser --------------------------------------------------------------------------------


@dataclasses.dataclass
class PageLoad:
    """What a page did in the browser: errors it logged, requests it made, and its DOM."""

    errors: list[str]
    requests: list[str]
    dom: dict[str, Any]


# Evaluated in the loaded page: what the tests check, as JSON.
_DOM = """JSON.stringify({
  counts: Object.fromEntries([...document.querySelectorAll('[data-count]')]
    .map(e => [e.dataset.count, e.innerText])),
  countsVisible: [...document.querySelectorAll('[data-count]')]
    .every(e => e.getBoundingClientRect().height > 0),
  errorCounts: Object.fromEntries([...document.querySelectorAll('[data-error-count]')]
    .map(e => [e.dataset.errorCount, e.innerText])),
  text: document.body ? document.body.textContent : '',
  scripts: document.scripts.length,
  images: document.images.length,
  broken: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).length,
  pwned: window.__pwned === undefined ? null : window.__pwned,
})"""


class _DevTools:
    """A minimal DevTools protocol client: numbered calls and buffered events, over one socket
    in flat session mode."""

    def __init__(self, socket: Any):
        self.socket = socket
        self.events: list[dict[str, Any]] = []
        self._next = 0

    async def call(self, method: str, session: str | None = None, **params: Any) -> dict:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        await self.socket.send_json(message)
        while True:
            reply = await self.socket.receive_json()
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"DevTools {method} failed: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    async def wait_for(self, method: str) -> None:
        while not any(e.get("method") == method for e in self.events):
            self.events.append(await self.socket.receive_json())

    async def drain(self, seconds: float) -> None:
        """Collects the events that arrive within ``seconds`` (late console or log entries)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                self.events.append(await asyncio.wait_for(self.socket.receive_json(), left))
            except TimeoutError:
                return


def _problems(events: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Console errors, uncaught exceptions and browser log errors; and requested URLs."""
    errors, requests = [], []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            args = [str(a.get("value", a.get("description", ""))) for a in params["args"]]
            errors.append("console: " + " ".join(args))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            errors.append(f"exception: {details.get('exception', {}).get('description', details)}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            errors.append(f"log ({entry['source']}): {entry['text']} {entry.get('url', '')}")
        elif method == "Network.requestWillBeSent":
            requests.append(params["request"]["url"])
    return errors, requests


async def _load(browser_url: str, page_url: str) -> PageLoad:
    import aiohttp

    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(browser_url, max_msg_size=0) as socket,
    ):
        tools = _DevTools(socket)
        target = (await tools.call("Target.createTarget", url="about:blank"))["targetId"]
        attached = await tools.call("Target.attachToTarget", targetId=target, flatten=True)
        session = attached["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            await tools.call(f"{domain}.enable", session)
        await tools.call("Page.navigate", session, url=page_url)
        await tools.wait_for("Page.loadEventFired")
        await tools.drain(0.5)
        result = await tools.call("Runtime.evaluate", session, expression=_DOM, returnByValue=True)
        await tools.call("Target.closeTarget", targetId=target)
    errors, requests = _problems(tools.events)
    return PageLoad(errors, requests, json.loads(result["result"]["value"]))


class Chromium:
    """Headless Chromium with its DevTools endpoint on a free local port."""

    def __init__(self, binary: str, profile: Path):
        self.log = open(profile.parent / "chromium.log", "wb")  # noqa: SIM115 (closed in close())
        self.process = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        # Chromium writes the port it picked, and the browser's socket path, into the profile.
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                log = (profile.parent / "chromium.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"headless Chromium did not start; its log ends:\n{log}")
            time.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        self.url = f"ws://127.0.0.1:{port}{path}"

    def load(self, page: Path) -> PageLoad:
        return asyncio.run(asyncio.wait_for(_load(self.url, page.resolve().as_uri()), 60))

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip(
            "headless Chromium is not installed: `apt-get install chromium` (Debian's package; "
            ".ci/run installs it)"
        )
    browser = Chromium(binary, tmp_path_factory.mktemp("chromium") / "profile")
    yield browser
    browser.close()


def test_browser_harness_sees_console_errors_and_requests(chromium, tmp_path):
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><body><p>x</p><script>console.error('boom')</script>"
        '<img src="http://127.0.0.1:9/x.png"></body></html>'
    )
    load = chromium.load(page)
    assert any("boom" in error for error in load.errors)
    assert "http://127.0.0.1:9/x.png" in load.requests
    assert load.dom["scripts"] == 1 and load.dom["broken"] == 1


@pytest.mark.parametrize("kind", ["filter", "score", "classify", "embed"])
def test_page_renders_offline_without_errors_and_shows_the_counts(jobs, chromium, kind, tmp_path):
    job = jobs[kind]
    page = Path(write_report(job.run.output, str(tmp_path / "report.html"), examples=100))
    load = chromium.load(page)

    assert load.errors == []
    # Only the page itself: styles, the histogram and thumbnails are inline, nothing is fetched.
    assert [u for u in load.requests if not u.startswith("data:")] == [page.resolve().as_uri()]
    summary = job.run.summary
    assert load.dom["counts"] == {k: f"{summary[k]:,}" for k in counter_names(kind)}
    assert load.dom["countsVisible"]
    table = job.run.table("errors")
    errors = Counter(table["error_type"].to_pylist() if table.num_rows else [])
    assert load.dom["errorCounts"] == {k: f"{v:,}" for k, v in errors.items()}
    assert load.dom["broken"] == 0 and load.dom["scripts"] == 0 and load.dom["pwned"] is None
    report: ReportData = collect(job.run.output, examples=100)
    assert load.dom["images"] == sum(1 for e in report.examples() if e.thumbnail)
    assert load.dom["images"] > 0
    if kind in ("filter", "classify", "embed"):
        assert INJECTED_ID in load.dom["text"]
    if kind == "filter":
        assert INJECTION in load.dom["text"]


def test_report_reads_reasons_of_either_spelling():
    from clipbeam.pipeline.report.data import reject_rules

    assert reject_rules(["min_score", "concept:text, logo"]) == ["min_score", "concept:text, logo"]
    assert reject_rules("min_score,top_fraction") == ["min_score", "top_fraction"]  # older
    assert reject_rules(None) == []
