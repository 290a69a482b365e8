"""A run's artefacts, in one package:

    layout      where every file of a run lies: folders, file names, party names (no I/O; cheap to import)
    codec       how its JSON files are read and written; the registry of artefact types (name -> dataclass,
                schema version)
    schemas     what each file holds, one module per producer
    directory   typed access to one run (:class:`RunDir`), creating and resuming runs (:func:`open_run`)

Every JSON file carries ``"schema"``; a file written by a newer version of this tool is refused with a
clear message, a file of the wrong shape is a one-line :class:`~collafuse_privacy.errors.UserError`
naming the file and the key (:mod:`collafuse_privacy.typed`). Numbers that are infinite or could not be
computed are stored as ``"inf"`` / ``null`` (:mod:`collafuse_privacy.numbers`).

The package imports nothing itself, so that :mod:`.layout` stays cheap (the CLI imports it at start-up).
"""
