"""The evaluation scripts' outputs, checked before any compute (utils/files.py): never an input, never each
other, never an existing file unless ``--overwrite``, each writable; the temporary files a killed save left
are removed."""
from __future__ import annotations


from utils.files import check_output, clean_orphans, refuse_existing, refuse_same


def prepare_outputs(outputs: dict[str, str | None], inputs: dict[str, str | None], overwrite: bool,
                    replaceable: tuple[str, ...] = (), hints: dict[str, str] | None = None) -> None:
    """A UserError (one line) unless every output (option -> path; None: not written) can be written.

    An output is refused if it is the same file as an input or as another output (resolved paths and hard
    links), if its location cannot be written (a folder, an unwritable folder: a probe file is tried), or if
    it exists and ``overwrite`` is not set (except the ``replaceable`` ones, caches; ``hints``: another way
    out than --overwrite, by output). Only then are the temporary files of an interrupted save removed."""
    named = [(what, path) for what, path in outputs.items() if path]
    refuse_same(dict(named), inputs)
    for i, (what, path) in enumerate(named):
        refuse_same({what: path}, dict(named[i + 1:]))
    for what, path in named:
        check_output(path, what, example=None)  # outputs of several kinds: .json, .npz, .png, .pth
    for what, path in named:
        if what not in replaceable:
            refuse_existing(path, overwrite, what, (hints or {}).get(what))
    for _, path in named:
        removed = clean_orphans(path)
        if removed:
            print(f"removed {len(removed)} temporary file(s) of an interrupted save: {', '.join(removed)}")
