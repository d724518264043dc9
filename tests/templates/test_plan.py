"""The planning table of the README, from given throughput figures (measuring is not a test)."""

from templates import plan


def test_table_from_throughput(capsys):
    assert plan.main(["--decode-per-core", "100", "--cpu-pairs-per-core", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| 1")}
    # 1B pairs at 1,100 pairs/s per GPU: 252.5 GPU-hours (253), over 64 GPUs 3.9 hours; on CPU at
    # 2 pairs/s per vCPU: 138,889 vCPU-hours, over 1000 workers of 16 vCPUs 8.7 hours.
    assert [c.strip() for c in rows["1B"].split("|")[1:-1]] == [
        "1B", "64", "3.9", "253", "1000", "8.7", "138,889"
    ]  # fmt: skip
    assert [c.strip() for c in rows["10M"].split("|")[2:5]] == ["4", "0.6", "3"]
    # 1,100 images/s at 100 per core: 11 vCPUs of decoding.
    assert "takes about 11 vCPUs of decoding" in lines[-1]


def test_int8_rows(capsys):
    argv = ["--decode-per-core", "100", "--cpu-pairs-per-core", "2", "--int8-pairs-per-core", "4"]
    assert plan.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| 1")}
    # 1B pairs at 4 pairs/s per vCPU: 69,444 vCPU-hours, over 1000 workers of 16 vCPUs 4.3 hours.
    assert [c.strip() for c in rows["1B, CPU int8"].split("|")[1:-1]] == [
        "1B, CPU int8", "", "", "", "1000", "4.3", "69,444"
    ]  # fmt: skip
    assert [c.strip() for c in rows["1B"].split("|")[5:8]] == ["1000", "8.7", "138,889"]
    assert "2.00 pairs/s through ViT-B/16 float32 on CPU, 4.00 in int8 (2.00x)" in lines[-1]


def test_no_int8_rows_without_an_int8_rate(capsys):
    assert plan.main(["--decode-per-core", "100", "--cpu-pairs-per-core", "2"]) == 0
    assert "int8" not in capsys.readouterr().out


def test_dedup_table(capsys):
    argv = ["--dedup-rows-per-core", "2000", "--fit-products-per-s", "1e8"]
    assert plan.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in lines if line.startswith("| 1B")]
    # 1B rows at 2,000 rows/s per vCPU: 138.9 vCPU-hours; the fit 1M x 50k x 20 / 1e8 per s =
    # 2.78 hours on one worker (44.4 vCPU-hours); over 100 workers of 16 vCPUs 2.78 + 0.09 hours.
    assert rows[1] == ["1B", "100", "2.8", "2.9", "183"]
    assert [r[1] for r in rows] == ["50", "100", "200"]
    assert "about 2.1 TB of 512-d float32 rows shuffled by cluster" in lines[-1]
