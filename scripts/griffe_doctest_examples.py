"""A griffe extension for the docs site (mkdocs.yml): the docstrings' `>>>` examples as code blocks.

The house writes docstrings as Keras does, an `Example:` line followed by unindented `>>>` lines, which
griffe's Google parser would render as nested Markdown quotes. This turns each run of doctest lines
(a `>>>` line, its `...` continuations and its output, up to a blank line) into a fenced `pycon` block,
outside fenced blocks that are already there. The docstrings themselves stay as they are: they are run
by `tests/test_losses_doctest.py` and the doctests of the modules.
"""

import griffe


def fence_doctests(text: str) -> str:
    lines, out, in_fence, i = text.splitlines(), [], False, 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if stripped.startswith("```"):
            in_fence = not in_fence
        if in_fence or not stripped.startswith(">>>"):
            out.append(line)
            i += 1
            continue
        indent = line[: len(line) - len(stripped)]
        block = []
        while i < len(lines) and lines[i].strip() and not lines[i].lstrip().startswith("```"):
            block.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        if out and out[-1].strip():
            out.append("")
        out += [f"{indent}```pycon", *(indent + b for b in block), f"{indent}```", ""]
    return "\n".join(out)


class DoctestExamples(griffe.Extension):
    def on_object(self, *, obj, **kwargs) -> None:  # griffe ≥ 1.13 calls it for every object
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)
