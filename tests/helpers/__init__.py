"""What several test files share (``tests/`` is on ``sys.path``, see ``conftest.py``): ``from helpers.x import y``.

- ``photos``: real scikit-image photos as uint8 batches.
- ``fit``: the one quiet CPU Lightning ``Trainer`` the tests fit with.
- ``models``: the small LightningModules more than one test file trains.
- ``stats_reference``: the numpy float64 reference of ``RangeStats`` and its property tests.
- ``ux``: the TensorBoard run the console/TensorBoard/report tests read back.
- ``idioms``: the CompVis/taming copies and event readers of the end-to-end idiom tests.
- ``pipelines``: the tiny random-init Stable Diffusion pipeline the pipeline, tag-layout and RNG tests generate with.
- ``latent_rgb``: ComfyUI's published latent-to-RGB factors and a ``colorsys`` hue, for previews and colours.
- ``script_runs``: the seeded plain-vs-watched run and the findings filter of the ``tests/scripts`` loops.
- ``fixtures_check``: the datamodules and modules that ``rangewatch check`` configs name by class path.

No test file imports another test file.
"""
