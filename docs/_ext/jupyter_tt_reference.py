"""Reference pages generated from the code, so that they cannot drift from it.

``{traits} module:Class`` renders a configurable's traits (name, type, default, help) as a table;
``{cli}`` renders ``jupyter tt --help`` and each subcommand's, as the installed CLI prints them.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util.docutils import SphinxDirective

#: Subcommands of ``jupyter tt`` with subcommands of their own.
NESTED = {"kernelspec": ["install"]}


def _default(cls, name: str, trait) -> str:
    """The default as written in the code; one computed when read (``@default``) is described in the help."""
    if hasattr(cls, f"_default_{name}"):
        return "computed (see help)"
    return trait.default_value_repr()


class Traits(SphinxDirective):
    required_arguments = 1

    def run(self):
        module, _, name = self.arguments[0].partition(":")
        cls = getattr(importlib.import_module(module), name)
        table = nodes.table()
        group = nodes.tgroup(cols=3)
        table += group
        for width in (20, 15, 65):
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        group += head
        head += self._row(["trait", "type, default", "what it does"])
        body = nodes.tbody()
        group += body
        for trait_name, trait in sorted(cls.class_traits(config=True).items()):
            body += self._row([f"{name}.{trait_name}", f"{type(trait).__name__}, {_default(cls, trait_name, trait)}", trait.help or ""],
                              literal_first=True)
        return [table]

    @staticmethod
    def _row(cells, literal_first=False):
        row = nodes.row()
        for i, text in enumerate(cells):
            entry = nodes.entry()
            para = nodes.paragraph()
            para += nodes.literal(text=text) if literal_first and i == 0 else nodes.Text(text)
            entry += para
            row += entry
        return row


class Cli(SphinxDirective):
    option_spec = {"command": directives.unchanged}

    def run(self):
        out = []
        top = self._help([])
        out += self._section("jupyter tt", top)
        for name in self._subcommands(top):
            out += self._section(f"jupyter tt {name}", self._help([name]))
            for sub in NESTED.get(name, []):
                out += self._section(f"jupyter tt {name} {sub}", self._help([name, sub]))
        return out

    @staticmethod
    def _help(args: list[str]) -> str:
        done = subprocess.run([sys.executable, "-m", "jupyter_tt.cli", *args, "--help"], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "COLUMNS": "100"})
        if done.returncode != 0:
            raise RuntimeError(f"jupyter tt {' '.join(args)} --help failed: {done.stderr}")
        return done.stdout

    @staticmethod
    def _subcommands(help_text: str) -> list[str]:
        start = help_text.index("{") + 1
        return help_text[start:help_text.index("}", start)].split(",")

    def _section(self, title: str, text: str):
        rubric = nodes.rubric(text=title)
        block = nodes.literal_block(text, text)
        return [rubric, block]


def setup(app):
    app.add_directive("traits", Traits)
    app.add_directive("cli", Cli)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
