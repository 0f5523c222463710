"""Talking to the Hub as a client: repo references, typed errors, metadata, ranged reads, and the
persistent block cache of ranged reads. Push and pull (``vindex_hub.push``, ``vindex_hub.pull``)
and the readers stand on this package; nothing here knows what a vindex is."""
