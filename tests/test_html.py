"""leaderboard.html: parsed with html.parser (every ranked method in its class's table, classes apart,
failures listed with their reasons, everything escaped, nothing fetched from the network), and opened in a
headless browser where one is installed (sorting and filtering work, no console errors)."""

from __future__ import annotations

import math
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from leetbench.leaderboard import build
from leetbench.page import page
from leetbench.plots import write_all
from leetbench.problem import Problem
from leetbench.report import write_report
from leetbench.results import Row

EVIL = '<script>alert("x")</script> & |pipe|'


def rows(method: str, family: str, times: dict[int, float], status: str = "ok", *, tf32: bool = False,
         error: str = "") -> list[dict]:
    return [Row.for_problem(method, family, Problem(1, 2, n, 16), status, time_ms=t, rel_err=1e-7, tf32=tf32,
                            error=error, host="h", method_hash="abc123", git_sha="deadbeef", torch="2.13",
                            time_ms_lo=t * 0.97, time_ms_hi=t * 1.03, copy_gbps=10.0).__dict__
            for n, t in times.items()]


N = {1024: 1.0, 4096: 4.0}


def results() -> pd.DataFrame:
    groups = [rows("cupy_chunked", "chunked", {k: v / 3 for k, v in N.items()}), rows("chunked", "chunked", N),
              rows("recurrent", "recurrent", {k: 5 * v for k, v in N.items()}),
              rows("fla_chunk", "peer:fla", {k: v / 5 for k, v in N.items()}, tf32=True),
              rows("lightning_attn2", "peer:lightning", {k: v / 4 for k, v in N.items()}, tf32=True),
              rows("broken", "f", {1024: math.nan}, "error", error=EVIL),
              rows("gpu_only", "f", {1024: math.nan}, "skipped", error="needs cupy (not installed)")]
    return pd.DataFrame([r for g in groups for r in g])


class Page(HTMLParser):
    """Tables by id with their rows' data-method, scripts, external references, and all text."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[str]] = {}
        self.current = ""
        self.scripts = 0
        self.external: list[str] = []
        self.text: list[str] = []
        self.images = 0
        self.details = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "table":
            self.current = a.get("id", "")
            self.tables[self.current] = []
        elif tag == "tr" and "data-method" in a:
            self.tables[self.current].append(a["data-method"])
        elif tag == "script":
            self.scripts += 1
        elif tag == "details":
            self.details += 1
        for key in ("src", "href"):
            v = a.get(key) or ""
            if v.startswith("data:image/png;base64,"):
                self.images += 1
            elif v:
                self.external.append(v)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html: str) -> Page:
    p = Page()
    p.feed(html)
    return p


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, pd.DataFrame]:
    df = results()
    board = build(df, "chunked")
    plots = write_all(df, board, tmp_path_factory.mktemp("plots"))
    return page(board, df, plots, [("methods/bad.py", "SyntaxError: <oops>")]), df


def test_every_ranked_method_is_in_its_class_table_and_classes_are_apart(built) -> None:
    html, df = built
    p = parse(html)
    board = build(df, "chunked")
    for i, c in enumerate(board.classes):
        ranked = set(c.table[c.table["ranked"]]["method"])
        if ranked:
            assert ranked <= set(p.tables[f"class-{i}"]), (c.key, p.tables)
    fp32 = next(i for i, c in enumerate(board.classes) if c.key["precision"] == "fp32")
    tf32 = next(i for i, c in enumerate(board.classes) if c.key["precision"] == "tf32")
    assert set(p.tables[f"class-{fp32}"]) == {"cupy_chunked", "chunked", "recurrent", "broken"}
    assert set(p.tables[f"class-{tf32}"]) == {"fla_chunk", "lightning_attn2"}
    assert set(p.tables[f"rows-{tf32}"]) == {"fla_chunk", "lightning_attn2"}


def test_failures_are_listed_with_their_reasons_escaped(built) -> None:
    html, _ = built
    p = parse(html)
    assert p.tables["failures"] == ["broken"]
    text = "".join(p.text)
    assert EVIL in text  # shown as text ...
    assert p.scripts == 1 and "<script>alert" not in html  # ... never as markup
    assert "needs cupy (not installed)" in text and "SyntaxError: <oops>" in text


def test_the_page_is_self_contained_with_plots_and_provenance(built) -> None:
    html, _ = built
    p = parse(html)
    assert p.external == [] and p.images >= 4
    assert p.details >= 10 and "method_hash: abc123" in "".join(p.text) and "git_sha: deadbeef" in "".join(p.text)
    assert set(p.tables["winners"]) >= {"cupy_chunked", "fla_chunk"}


def test_every_report_writes_the_page(tmp_path: Path) -> None:
    write_report(results(), tmp_path, "chunked", plots=False)
    p = parse((tmp_path / "leaderboard.html").read_text())
    assert "cupy_chunked" in p.tables["class-0"] and p.images == 0


def browser() -> str | None:
    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


PROBE = """<script>
document.addEventListener('DOMContentLoaded', function () {
  var table = document.getElementById('class-0');
  var first = function () { return table.tBodies[0].rows[0].getAttribute('data-method'); };
  var th = table.querySelectorAll('th')[1];  // method: a text sort, ascending then descending
  th.click();
  document.body.setAttribute('data-first', first());
  th.click();
  document.body.setAttribute('data-last', first());
  table.querySelectorAll('th')[4].click();  // speed-up: numeric, the missing ones last
  document.body.setAttribute('data-slowest', first());
  var inp = document.querySelector('.bar input[name=method]');
  inp.value = 'cupy';
  inp.dispatchEvent(new Event('input'));
  var shown = Array.prototype.filter.call(table.tBodies[0].rows, function (r) { return r.style.display !== 'none'; });
  document.body.setAttribute('data-shown', shown.map(function (r) { return r.getAttribute('data-method'); }).join(','));
});
</script></body>"""


@pytest.mark.slow
@pytest.mark.skipif(browser() is None, reason="no chromium installed")
def test_the_page_sorts_and_filters_in_a_browser(built, tmp_path: Path) -> None:
    html, _ = built
    path = tmp_path / "leaderboard.html"
    path.write_text(html.replace("</body>", PROBE))
    proc = subprocess.run(
        [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--enable-logging=stderr", "--v=0", "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=120)
    body = next(line for line in proc.stdout.splitlines() if "<body" in line)
    assert 'data-ready="1"' in body, proc.stderr[-2000:]
    assert 'data-first="broken"' in body and 'data-last="recurrent"' in body
    assert 'data-slowest="recurrent"' in body
    assert 'data-shown="cupy_chunked"' in body
    assert "Uncaught" not in proc.stderr


def test_a_table_merged_from_several_commits_names_each_with_its_rows() -> None:
    """A leaderboard of runs at two commits must not claim the first one for every row (page and markdown)."""
    from leetbench.leaderboard import markdown

    df = results()
    later = pd.DataFrame(rows("chunked", "chunked", {16384: 16.0}))
    later["git_sha"] = "cafe0001"
    both = pd.concat([df, later], ignore_index=True)
    p = Page()
    p.feed(page(build(both), both))
    text = "".join(p.text)
    assert f"commits deadbeef ({len(df)} rows), cafe0001 (1 row)" in text
    assert f"commits deadbeef ({len(df)} rows), cafe0001 (1 row)" in markdown(build(both), both)
    one = Page()
    one.feed(page(build(df), df))
    assert "commit deadbeef" in "".join(one.text) and "commits" not in "".join(one.text)


def test_the_setting_line_names_each_host_machine_that_shares_a_name() -> None:
    """Lent machines all called `vm` differ in CPU and kernel (launch-bound rows measure them): both named."""
    from leetbench.leaderboard import markdown

    df = results()
    df["cpu"], df["os"] = "AMD EPYC", "Linux 6.18.44-fc"
    other = df.iloc[:1].copy()
    other["cpu"], other["os"], other["length"] = "Intel Xeon", "Linux 4.4.0", 65536
    both = pd.concat([df, other], ignore_index=True)
    line = "; host AMD EPYC, Linux 6.18.44-fc / Intel Xeon, Linux 4.4.0"
    assert line in markdown(build(both), both)
    p = Page()
    p.feed(page(build(both), both))
    assert line in "".join(p.text)
    old = results()  # rows from before these columns: nothing to name
    assert "; host" not in markdown(build(old), old)
