"""Data: everything between files on disk and batches of tensors.

Readers of the three layouts (``market``, ``course``, ``custom``; ``load.load_dataset`` picks one)
into :class:`records.ImageRecord` lists with identity-level attribute labels (Market-1501's
``market_attribute.mat``, Lin et al. 2019), image decoding (``io``), the evaluation sets and
splits (``evalset``, ``splits``), the torch dataset, PK sampler and decoded-image cache,
transforms (``transforms``: also the config -> transform settings a checkpoint needs), the
synthetic generator (``synth`` writes the dataset; ``appearance`` samples identities, cameras
and poses, ``drawing`` paints the figure, ``camera`` the image around it), synthetic multi-camera footage with ground
truth (``footage_synth`` writes it; ``footage_plan`` schedules who walks where and when,
``footage_scene`` draws each camera's scene and the walkers) and ``inspect`` (summary and check).

May import: ``attreid.errors``, ``attreid.schema``, ``attreid.config``, ``attreid.utils``.
"""
