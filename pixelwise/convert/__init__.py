"""The authors' released weights as pixelwise checkpoints.

One reader per file format (``caffe``, ``torch7``, ``lasagne``, ``matconvnet``), one small file
per release in ``releases/`` defining a :class:`~pixelwise.convert.release.Release`, the zoo that
collects them (:mod:`pixelwise.convert.zoo`) and :func:`pixelwise.convert.convert.convert_release`,
which turns a file into a checkpoint that eval, predict, export and compare load. docs/model-zoo.md
lists the releases.
"""
