"""The on-disk format of a vindex: file names, the binary's layout, the sidecar, the phase documents,
the Arrow mirror's configs and schemas, the card's typed data and LarQL's index.

Writers, readers, the card, ``verify``, push and pull all import from here, and this package
imports none of them: a key is spelled in one module of it.

=================  ===========================================================================
``filenames``      every file and folder name; the files a vindex owns; our bookkeeping markers
``layout``         element type, byte order, the offset rule, the sign rule
``selection``      layer selections (``3,5,7-9``) and spans
``statistics``     the names of the published statistics (``var64``, ``median_var64``...)
``sidecar``        the typed sidecar ``VindexIndex``
``phases``         the keys of ``phase1_moe_svd.json`` / ``phase2_router_svd.json``
``mirror``         the Arrow mirror: configs, splits, columns, parquet paths, Arrow schemas
``card_data``      the card's typed front matter and the user's card options
``larql``          LarQL's ``index.json`` document
``seed``           reading (and upgrading) the seed's published sidecar
``pull_marker``    the marker ``pull`` leaves in a folder it made (repo, commit, format, layers)
``geometry``       the expert geometry's config, columns and phase keys; a comparison's files
=================  ===========================================================================

The format, in prose (``docs/format.md`` has every file, field by field)
======================================================================

A vindex is a folder::

    gate_vectors.bin          float32, little-endian, C order, no header:
                              [num_layers, num_experts, num_feats, hidden_size]
    gate_vectors_index.json   the sidecar (below); the seed card's usage snippet runs on it
    phase1_moe_svd.json       per layer: routed experts (var-K summary), shared expert, router
    phase2_router_svd.json    per layer: router SVD (top-k energy, effective/stable rank, s0/s1)
    README.md                 the dataset card (YAML front matter + text)
    images/var_per_layer.png  the var-K plot shown in the card
    images/expert_overlap.png optional (``--geometry``): the expert-overlap figure of the card
    index.json                LarQL's index (format version 2) over the same gate_vectors.bin
    router_weights.bin        optional, LarQL's router layout (a block for every model layer)
    embeddings.bin            optional (LarQL's browse tier): the input embedding, [vocab, hidden] f16/f32
    tokenizer.json            optional (LarQL's browse tier): the model's tokenizer, copied
    data/...parquet           the Arrow mirror (``mirror``): configs expert_stats (the default),
                              router_svd, layer_NN (one file each), gate_vectors (all layer files),
                              feature_tokens (optional), expert_overlap (optional, ``geometry``)

Layers are stored in ascending layer-id order, one contiguous block each, with no gaps: the
``i``-th stored layer starts at ``i * layer_nbytes``. A vindex of a subset of layers (``--layers
3-5``) stores only those, still from offset 0. Inside a layer block the experts follow in
order, each a ``[num_feats, hidden_size]`` row-major block of unit-norm right singular vectors,
rows by descending singular value.

Sign rule: each vector is multiplied by +1 or -1 so that its entry of largest magnitude is
positive (the first such entry on ties). Two builds of the same checkpoint are bit-identical.

The sidecar ``gate_vectors_index.json``::

    format_version       int; readers refuse a version they do not know
    dtype, byteorder, layout, file
    num_feats, num_layers, total_bytes
    model_config         {model_type, num_hidden_layers, moe: {n_routed_experts, n_shared_experts,
                          num_experts_per_tok, hidden_size, moe_intermediate_size}}
    source               {repo_id, revision} for a Hub checkpoint (revision: its commit sha), or
                         {name, fingerprint} for a local one (the folder's name, never its path;
                         older sidecars' ``path`` is still read); when known, ``model_id`` (the
                         Hub model a local checkpoint's config names) and ``license`` (the source
                         model card's)
    builder              {name, version, method, sign_rule, svd_route, blas_threads, workers}
    router_matrix        only as false: the model's router is not an [E, H] matrix (an MLP), so
                         the vindex holds no router figures: each layer's ``router`` in phase 1
                         and its entry in phase 2 are null, ``router_svd`` has the layer column
                         alone, no router_weights.bin. Absent (every older sidecar): a matrix.
    layers               {"L": {file_offset, shape, nbytes, sha256,
                                median_var{K}, q25_var{K}, q75_var{K}}}
"""
