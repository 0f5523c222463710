"""The read side: ``Vindex`` (local, snapshot, lazy and arrow reads), ``remote_info``, ``local_folder``.

files.py      where the small files come from (a folder, a repo pinned to a commit)
readers.py    where the layers come from (memmap, ranged Hub reads, the Arrow mirror); each
              reader owns its integrity state
integrity.py  the checks a reader runs on bytes before handing them out
vindex.py     ``Vindex``
info.py       ``remote_info``, ``local_folder``

It never imports the writers, build or verify: ``pull`` (``vindex_hub.pull``) stands above it.
"""

from .info import local_folder, remote_info
from .readers import Verify, VerifyMode
from .vindex import MODES, Mode, Vindex

__all__ = ["MODES", "Mode", "Verify", "VerifyMode", "Vindex", "local_folder", "remote_info"]
