"""Griffe extension for the API pages: Sphinx roles in docstrings become Markdown code spans.

The package's docstrings name objects the reStructuredText way (``:class:`SiameseModule```,
``:func:`~mvssl_lightning.losses.mec_loss```); mkdocstrings renders Markdown, where such a role would
show as literal text. ``:role:`~a.b.C``` becomes ```C``` (the ``~`` keeps the last name, as in Sphinx),
``:role:`a.b.C``` becomes ```a.b.C```. Loaded by ``mkdocs.yml`` (mkdocstrings, python handler, ``extensions``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|obj|exc|const|py:\w+):`(~?)([^`]+)`")


def _code_span(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


class RSTRoles(griffe.Extension):
    """Rewrite the roles of every docstring before griffe parses it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_code_span, obj.docstring.value)
