"""What the ``mvssl`` and ``mvssl-eval`` commands print: errors as one line, metrics as one table.

- :func:`error_line`: a constructor that rejects its arguments (a missing or truncated checkpoint, a backbone
  that does not fit, ``lr < 0``) reaches the command wrapped by jsonargparse in ``Does not validate against
  any of the Union subtypes ... Given value: Namespace(<the whole configuration>)``, eighty lines with the
  cause in the middle. The commands print ``<prog>: error: <ExceptionType>: <cause>`` instead (the cause is
  the error the constructor raised; a multi-line cause, such as a list of changed hyperparameters, stays a
  short list) and exit with status 2.
- :func:`metrics_table`: ``validate`` prints every scalar metric once; Lightning's own table repeats the
  epoch-level metrics (kNN, probe) under every validation loader ("DataLoader 0", "DataLoader 1").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

__all__ = ["error_line", "metrics_table"]

_UNION = "Does not validate against any of the Union subtypes"


def _raised_by_jsonargparse(error: BaseException) -> bool:
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and "jsonargparse" in tb.tb_frame.f_code.co_filename


def _cause(error: BaseException) -> BaseException:
    """The error the constructor raised: the first one below ``error`` in its ``__cause__`` chain that
    jsonargparse did not raise (``error`` itself when it has no cause). Not the chain's end: that may be the
    library error our message already summarises (``torch.load``'s, under "not a readable checkpoint")."""
    chain = [error]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    return next((e for e in chain[1:] if not _raised_by_jsonargparse(e)), chain[-1])


def _union_items(message: str) -> list[str]:
    """The per-subtype errors of jsonargparse's Union message, without ``Expected a <class 'NoneType'>``."""
    lines = message.splitlines()
    if "Errors:" not in lines:
        return []
    items = []
    for line in lines[lines.index("Errors:") + 1:]:
        if not line.startswith("  - "):
            break
        item = line[4:].strip()
        if not item.startswith("Expected a <class 'NoneType'>"):
            items.append(item)
    return items


def error_line(prog: str, error: BaseException) -> Optional[str]:
    """``"<prog>: error: <Type>: <cause>"`` for an error raised by a constructor the command instantiated
    (module docstring), or ``None`` for any other error: a bug keeps its traceback, and an error our own code
    raised while the run was set up (``raise ValueError(<our message>) from <library error>``) keeps its message,
    which ends the traceback, instead of being replaced by the library error it wraps."""
    if not _raised_by_jsonargparse(error):
        return None
    cause = _cause(error)
    if cause is not error:
        return f"{prog}: error: {type(cause).__name__}: {cause}"
    if _UNION in str(error):
        items = _union_items(str(error))
        return f"{prog}: error: {'; '.join(items) if items else str(error).splitlines()[0]}"
    return None


def metrics_table(metrics: Mapping[str, Any]) -> str:
    """``metric  value`` lines of the scalar ``metrics``, sorted by name, each once (``""`` when none)."""
    values = {k: float(v) for k, v in sorted(metrics.items()) if getattr(v, "numel", lambda: 1)() == 1}
    if not values:
        return ""
    width = max(len(k) for k in values)
    lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  ------"]
    lines += [f"{k.ljust(width)}  {v:.4f}" for k, v in values.items()]
    return "\n".join(lines)
