"""Copy the packaged card template to dataset_card/ (the copy for readers of the repository).
The packaged copy, vindex_hub/writers/templates/, is the one that is rendered; a test checks the
two are the same."""

import shutil
from pathlib import Path

root = Path(__file__).resolve().parent.parent
name = "vindex_card.md.j2"
shutil.copyfile(root / "vindex_hub" / "writers" / "templates" / name, root / "dataset_card" / name)
print(f"dataset_card/{name} updated")
