"""The docs site (mkdocs.yml, docs/): its API reference names every public name, and it builds offline.

`.ci/run` builds it with `mkdocs build --strict`; these tests check what a strict build does not: that
nothing public is missing from the reference, that no plugin needs the network, and that the docstrings'
`>>>` examples render as code (scripts/griffe_doctest_examples.py). The examples themselves run in
tests/test_readme.py (the pages') and tests/test_losses_doctest.py (the docstrings').
"""

import importlib.util
import re

import yaml

import readme_examples
import rkd_keras
import rkd_keras.losses

ROOT = readme_examples.ROOT


def _directives():
    """The objects the pages render with mkdocstrings (`::: path`), by page."""
    return {
        page: re.findall(r"(?m)^::: (\S+)$", (ROOT / page).read_text())
        for page in readme_examples.pages() if page.startswith("docs/")
    }


def _config():
    # mkdocs.yml holds no Python tags, so the plain safe loader reads it.
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def test_the_api_reference_has_an_entry_for_every_public_name():
    rendered = {path for paths in _directives().values() for path in paths}
    # A name of rkd_keras is rendered where its module defines it; a submodule as itself.
    expected = {
        name: f"{rkd_keras._PUBLIC[name]}.{name}" if name in rkd_keras._PUBLIC else f"rkd_keras.{name}"
        for name in rkd_keras.__all__
    }
    missing = {name: path for name, path in expected.items() if path not in rendered}
    assert not missing, missing
    assert len(expected) == 69 and {"rkd_keras.distiller.Distiller", "rkd_keras.retrieval.recall_at_k"} <= rendered


def test_the_losses_page_has_every_loss_of_losses_and_its_wrapper():
    on_losses = _directives()["docs/losses.md"]
    for name, wrapper in rkd_keras.losses.LOSSES.items():
        assert f"rkd_keras.losses.{name}" in on_losses, name
        assert f"rkd_keras.losses.{wrapper.__name__}" in on_losses, wrapper.__name__
    assert len(rkd_keras.losses.LOSSES) == 14


def test_the_site_lists_every_page_and_needs_no_network():
    config = _config()
    nav = [next(iter(entry.values())) for entry in config["nav"]]
    assert sorted(f"docs/{page}" for page in nav) == [page for page in readme_examples.pages() if page != "README.md"]
    plugins = [plugin if isinstance(plugin, str) else next(iter(plugin)) for plugin in config["plugins"]]
    # material's social cards and privacy plugin download at build time; the site builds offline.
    assert plugins == ["search", "mkdocstrings"] and config["strict"] is True
    assert config["theme"]["font"] is False  # no web fonts fetched by the reader's browser


def _extension():
    spec = importlib.util.spec_from_file_location("griffe_doctest_examples", ROOT / "scripts" / "griffe_doctest_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_doctest_lines_become_a_code_block_and_fenced_formulas_stay():
    docstring = (
        "RKD-D.\n\nFormula:\n```\nloss = mean of huber(ψ_t − ψ_s)\n>>> not a doctest inside a fence\n```\n"
        "Example:\n>>> x = 2\n>>> round(x * 1.5, 1)\n3.0\n\nAfter.\n    >>> indented = 1\n"
    )
    lines = _extension().fence_doctests(docstring).splitlines()
    assert lines[3:7] == ["```", "loss = mean of huber(ψ_t − ψ_s)", ">>> not a doctest inside a fence", "```"]
    assert lines[7:14] == ["Example:", "", "```pycon", ">>> x = 2", ">>> round(x * 1.5, 1)", "3.0", "```"]
    assert lines[-5:] == ["After.", "", "    ```pycon", "    >>> indented = 1", "    ```"]


def _anchor(heading):
    """The anchor GitHub and mkdocs both give a heading of plain words (`## The demo: RKD` → `the-demo-rkd`)."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_readmes_links_into_the_site_name_pages_and_headings_that_exist():
    links = re.findall(r"\]\(((?!https?:)[^)#]+)(?:#([^)]+))?\)", (ROOT / "README.md").read_text())
    assert len({page for page, _ in links if page.startswith("docs/")}) >= 9, links
    for page, anchor in links:
        assert (ROOT / page).is_file(), page
        if anchor:
            headings = re.findall(r"(?m)^#+ (.+)$", (ROOT / page).read_text())
            assert anchor in {_anchor(heading) for heading in headings}, (page, anchor)
